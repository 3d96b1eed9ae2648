"""Configs: merging, overrides, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from megadepth.common.errors import ConfigError, DataError
from megadepth.config import all_keys, explain, load_config, resolve_batch, to_yaml, validate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# The keys the docs and scripts rely on (README, docs/*.md, configs/): renaming one breaks them.
CONTRACT_KEYS = """model.depth model.width model.heads model.base_depth model.base_width model.activation
model.seq_len model.vocab_size parametrization.name parametrization.alpha parametrization.gamma optimizer.name
optimizer.lr optimizer.weight_decay schedule.warmup_steps train.steps train.micro_batch train.grad_accum
train.seed train.log_every train.eval_every train.save_every train.out_dir data.path parallel.tensor
parallel.pipeline parallel.sequence_parallel parallel.zero_stage wandb.mode""".split()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_contract_keys_exist() -> None:
    assert set(CONTRACT_KEYS) <= set(all_keys())


def test_every_key_is_documented() -> None:
    rows = explain()
    assert len(rows) == len(all_keys())
    undocumented = [key for key, _, doc in rows if len(doc) < 10]
    assert undocumented == []


def test_files_merge_left_to_right(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "model: {depth: 3, width: 32, heads: 2}\noptimizer: {lr: 0.1}\n")
    b = write(tmp_path, "b.yaml", "model: {depth: 5}\n")
    cfg = load_config([a, b])
    assert (cfg.model.depth, cfg.model.width, cfg.model.heads, cfg.optimizer.lr) == (5, 32, 2, 0.1)
    cfg = load_config([b, a])
    assert cfg.model.depth == 3


def test_include_is_merged_before_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "shape.yaml", "model: {depth: 7, width: 48, heads: 3}\n")
    top = write(tmp_path, "top.yaml", "include: [sub/shape.yaml]\nmodel: {depth: 9}\n")
    cfg = load_config([top])
    assert (cfg.model.depth, cfg.model.width) == (9, 48)


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "x.yaml", "include: [y.yaml]\n")
    y = write(tmp_path, "y.yaml", "include: [x.yaml]\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config([y])


def test_overrides_convert_types() -> None:
    cfg = load_config([], ["train.steps=20", "model.tie_embeddings=false", "optimizer.betas=[0.8, 0.9]",
                           "optimizer.lr=1e-3", "data.path=[0.3, a, 0.7, b]", "wandb.group=abc"])
    assert cfg.train.steps == 20 and isinstance(cfg.train.steps, int)
    assert cfg.model.tie_embeddings is False
    assert cfg.optimizer.betas == (0.8, 0.9)
    assert cfg.optimizer.lr == pytest.approx(1e-3)
    assert cfg.data.path == [0.3, "a", 0.7, "b"]
    assert cfg.wandb.group == "abc"


def test_later_override_wins() -> None:
    assert load_config([], ["train.steps=5", "train.steps=6"]).train.steps == 6


@pytest.mark.parametrize(
    ("override", "named", "suggested"),
    [
        ("model.dpeth=3", "model.dpeth", "model.depth"),
        ("train.lr=0.1", "train.lr", "optimizer.lr"),
        ("optimiser.lr=0.1", "optimiser.lr", "optimizer.lr"),
        ("parallel.tensr=2", "parallel.tensr", "parallel.tensor"),
    ],
)
def test_unknown_override_names_key_and_suggests(override: str, named: str, suggested: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert f"'{named}'" in str(info.value) and f"'{suggested}'" in str(info.value)


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "model:\n  widht: 64\n")
    with pytest.raises(ConfigError) as info:
        load_config([path])
    msg = str(info.value)
    assert "model.widht" in msg and "model.width" in msg and "bad.yaml" in msg


def test_unknown_section_suggests_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="did you mean 'schedule'"):
        load_config([write(tmp_path, "s.yaml", "schedul: {warmup_steps: 3}\n")])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("model.depth=abc", "model.depth"),
        ("model.depth=2.5", "model.depth"),
        ("model.depth=0", "model.depth"),
        ("model.activation=tanh", "model.activation"),
        ("train.micro_batch=[1]", "train.micro_batch"),
        ("optimizer.betas=[0.9, x]", "optimizer.betas"),
    ],
)
def test_wrong_types_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_section_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match="'model'"):
        validate({"model": 3})


def test_cross_field_checks() -> None:
    with pytest.raises(ConfigError, match="divisible by model.heads"):
        load_config([], ["model.width=100", "model.heads=3"])
    with pytest.raises(ConfigError, match="position table"):
        load_config([], ["model.seq_len=512", "model.max_positions=256"])
    with pytest.raises(ConfigError, match="custom"):
        load_config([], ["parametrization.name=custom", "parametrization.alpha=0.5"])
    with pytest.raises(ConfigError, match="fixed by the preset"):
        load_config([], ["parametrization.name=depth_mup", "parametrization.alpha=1.0"])
    with pytest.raises(ConfigError, match="sequence_parallel"):
        load_config([], ["parallel.sequence_parallel=true"])


def test_derived_batch_sizes() -> None:
    cfg = load_config([], ["train.micro_batch=4", "train.global_batch=32"])
    assert resolve_batch(cfg, dp_size=2) == (4, 32)
    assert resolve_batch(cfg, dp_size=8) == (1, 32)
    with pytest.raises(ConfigError, match="not divisible"):
        resolve_batch(cfg, dp_size=3)
    cfg = load_config([], ["train.micro_batch=4", "train.grad_accum=2", "train.global_batch=32"])
    with pytest.raises(ConfigError, match=r"global_batch \(32\) != train.micro_batch \(4\)"):
        resolve_batch(cfg, dp_size=1)
    assert resolve_batch(load_config([], ["train.micro_batch=3"]), dp_size=2) == (1, 6)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = write(tmp_path, "evil.yaml", "model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([path])


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    cfg = load_config([CONFIGS / "quickstart.yaml"], ["train.steps=7"])
    again = load_config([write(tmp_path, "resolved.yaml", to_yaml(cfg))])
    assert again == cfg


def test_config_is_frozen() -> None:
    cfg = validate({})
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its ValidationError subclass
        cfg.train.steps = 3  # type: ignore[misc]


@pytest.mark.parametrize("shape", sorted(p.name for p in (CONFIGS / "model").glob("*.yaml")))
@pytest.mark.parametrize("preset", sorted(p.name for p in (CONFIGS / "parametrization").glob("*.yaml")))
def test_shipped_configs_compose(shape: str, preset: str) -> None:
    cfg = load_config([CONFIGS / "model" / shape, CONFIGS / "parametrization" / preset])
    assert cfg.parametrization.name == preset.removesuffix(".yaml")


def test_shipped_shapes_match_benchmarks() -> None:
    expected = {"gpt-124m": (12, 768, 1024), "gpt-350m": (24, 1024, 1024), "gpt-1.3b": (24, 2048, 2048)}
    for name, (depth, width, seq) in expected.items():
        m = load_config([CONFIGS / "model" / f"{name}.yaml"]).model
        assert (m.depth, m.width, m.seq_len, m.vocab_size) == (depth, width, seq, 50304)


@pytest.mark.parametrize("name", ["llama-125m", "llama-350m", "llama-1.3b"])
def test_llama_presets_have_the_parameter_count_of_their_names(name: str) -> None:
    """The count is read from the name ("125m", "1.3b") and checked against the model the preset builds
    (on the meta device: no memory, no time), tied matrices counted once, within 5% of the name."""
    import torch

    from megadepth.model import GPT
    from megadepth.parametrize import Parametrization

    size = name.removeprefix("llama-")
    named = float(size[:-1]) * {"m": 1e6, "b": 1e9}[size[-1]]
    cfg = load_config([CONFIGS / "model" / f"{name}.yaml", CONFIGS / "parametrization" / "completep.yaml"])
    m = cfg.model
    assert (m.norm, m.mlp, m.position, m.bias, m.padded_vocab) == ("rmsnorm", "swiglu", "rotary", False, 50304)
    with torch.device("meta"):
        model = GPT(m, Parametrization.from_config(m, cfg.parametrization, optimizer=cfg.optimizer.name).multipliers())
    count = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert abs(count / named - 1) < 0.05, f"{name}: {count:,} parameters"


def test_older_spellings_of_renamed_model_keys() -> None:
    """Run directories of earlier versions hold model.activation and model.rotary_base: they still load, as
    model.mlp and model.rope_theta, and a disagreement between the two spellings is refused by name."""
    old = load_config([], ["model.activation=abs", "model.rotary_base=500"]).model
    assert (old.mlp, old.rope_theta) == ("abs", 500.0)
    assert "  activation:" not in to_yaml(load_config([], ["model.activation=abs"]))
    with pytest.raises(ConfigError, match=r"model.activation \(abs\) and model.mlp \(relu\) disagree"):
        load_config([], ["model.activation=abs", "model.mlp=relu"])
    with pytest.raises(ConfigError, match="model.activation"):
        load_config([], ["model.activation=swiglu"])  # the older key never took the new value


@pytest.mark.parametrize(("override", "message"), [
    (["model.kv_heads=3"], r"model.kv_heads \(3\) must divide model.heads \(4\)"),
    (["model.kv_heads=8"], r"model.kv_heads \(8\) must divide model.heads"),
    (["model.block=linear", "model.mlp=swiglu"], r"model.mlp: swiglu need model.block: transformer"),
    (["model.block=linear", "model.qk_norm=true"], r"model.qk_norm: True need model.block: transformer"),
    (["model.qk_norm=true", "parametrization.zero_query=true"], "zero_query with model.qk_norm"),
])
def test_llama_options_refuse_impossible_combinations(override: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config([], override)


@pytest.mark.parametrize(("name", "hint"), [("muon", "optimizer.muon.momentum"), ("adamw", "optimizer.betas")])
def test_sgd_momentum_with_another_optimizer_is_refused(name: str, hint: str) -> None:
    with pytest.raises(ConfigError, match=f"optimizer.momentum is SGD's .* optimizer.name: {name} .*{hint}"):
        load_config([], [f"optimizer.name={name}", "optimizer.momentum=0.9"])


def test_swiglu_hidden_width_follows_llamas_rule() -> None:
    """8/3 x width rounded up to ffn_multiple_of (Llama 2 7B: width 4096, multiple 256 -> 11008), unless
    model.ffn_hidden says otherwise; the non-gated MLPs keep mlp_ratio x width."""
    llama7b = load_config([], ["model.width=4096", "model.heads=32", "model.mlp=swiglu"]).model
    assert llama7b.mlp_width == 11008
    assert load_config([CONFIGS / "model" / "llama-tiny.yaml"]).model.mlp_width == 192
    assert load_config([], ["model.mlp=swiglu", "model.ffn_hidden=100"]).model.mlp_width == 100
    assert load_config([], ["model.width=64", "model.mlp_ratio=3"]).model.mlp_width == 192


def test_quickstart_is_depth_mup() -> None:
    cfg = load_config([CONFIGS / "quickstart.yaml"])
    assert cfg.parametrization.name == "depth_mup"
    assert cfg.model.depth > (cfg.model.base_depth or cfg.model.depth)


def test_every_key_can_be_set_from_the_command_line() -> None:
    """--set KEY=VALUE reaches every leaf key of the schema (overrides work for every key):
    each key set to its default's YAML text gives back the default config exactly."""
    import yaml as _yaml

    from megadepth.config.load import explain

    base = load_config([]).model_dump(mode="json")
    keys = [key for key, _, _ in explain()]
    assert len(keys) > 60
    older = {"model.activation": ("model.mlp", "relu"), "model.rotary_base": ("model.rope_theta", "500000.0")}
    for key in keys:
        if key in older:  # an older spelling: not dumped, sets the key it was renamed to
            new, text = older[key]
            assert load_config([], [f"{key}={text}"]) == load_config([], [f"{new}={text}"]) != load_config([]), key
            continue
        value = base
        for part in key.split("."):
            value = value[part]
        text = _yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        got = load_config([], [f"{key}={text}"]).model_dump(mode="json")
        assert got == base, key


def test_a_key_given_twice_in_one_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.yaml", "optimizer:\n  lr: 0.1\n  weight_decay: 0.0\n  lr: 0.5\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML: .*key 'lr' is given twice"):
        load_config([path])
    ok = write(tmp_path, "ok.yaml", "optimizer: {lr: 0.1}\nmodel: {depth: 3, width: 32, heads: 2}\n")
    assert load_config([ok]).optimizer.lr == 0.1


@pytest.mark.parametrize("override", ["model={depth: 6}", "model=3"])
def test_setting_a_whole_section_says_it_is_a_section(override: str) -> None:
    with pytest.raises(ConfigError, match=r"'model' is a config section, not a key: .*--set model\.depth"):
        load_config([], [override])


def test_booleans_are_not_numbers_but_stay_booleans() -> None:
    with pytest.raises(ConfigError, match="model.depth: expected a number, got the boolean true"):
        load_config([], ["model.depth=true"])
    with pytest.raises(ConfigError, match="optimizer.lr: expected a number, got the boolean false"):
        load_config([], ["optimizer.lr=false"])
    cfg = load_config([], ["model.tie_embeddings=false", "train.compile=true"])
    assert cfg.model.tie_embeddings is False and cfg.train.compile is True


def test_a_yaml_boolean_where_text_belongs_is_named_with_its_section(tmp_path: Path) -> None:
    """`mode: off` is the boolean false in YAML: the message said "mode: expected a number"."""
    path = tmp_path / "c.yaml"
    path.write_text("wandb:\n  mode: off\n")
    with pytest.raises(ConfigError, match=r"wandb.mode: expected one of 'offline', 'online', 'disabled', got the "
                                          r"boolean false \(YAML reads unquoted yes/no/on/off"):
        load_config([path])


def test_unreadable_config_files_are_one_line(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"wandb:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text \(byte 18"):
        load_config([latin])
    deep = tmp_path / "deep.yaml"
    deep.write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="deep.yaml: not valid YAML: nested too deeply"):
        load_config([deep])


def test_keys_one_level_too_high_are_pointed_to_their_section() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'seed' \(in --set\); did you mean 'train.seed'"):
        load_config([], ["seed=5"])
    with pytest.raises(ConfigError, match=r"'name'.*did you mean 'optimizer.name' or 'parametrization.name'"):
        load_config([], ["name=sp"])
    with pytest.raises(ConfigError, match=r"'dpeth'.*did you mean 'model.depth'"):
        load_config([], ["dpeth=3"])
    with pytest.raises(ConfigError, match=r"'includes'.*did you mean 'include'"):
        load_config([], ["includes=x"])
    with pytest.raises(ConfigError, match=r"'include' lists other files at the top of a config file"):
        load_config([], ["include=a.yaml"])
    with pytest.raises(ConfigError, match=r"'mode'.*did you mean 'wandb.mode'"):  # not the section 'model'
        load_config([], ["mode=offline"])
    with pytest.raises(ConfigError, match=r"'warmup'.*did you mean 'schedule.warmup_steps'"):
        load_config([], ["warmup=3"])


@pytest.mark.parametrize(("spelled", "meant"), [
    ("muon.lr", "optimizer.muon.lr"), ("train.muon.lr", "optimizer.muon.lr"), ("Muon.lr", "optimizer.muon.lr"),
    ("optimizer.muon_lr", "optimizer.muon.lr"), ("optimizer.muonlr", "optimizer.muon.lr"),
    ("muon_lr", "optimizer.muon.lr"), ("optimizer_lr", "optimizer.lr"), ("model_depth", "model.depth")])
def test_a_nested_key_spelled_short_or_flat_points_to_it(spelled: str, meant: str) -> None:
    """'muon.lr' is optimizer.muon.lr, not the leaf rule's optimizer.lr (which would change the other LR);
    underscores for dots point to the dotted key, not to its section."""
    with pytest.raises(ConfigError, match=rf"'{spelled}' \(in --set\); did you mean '{meant}'\?"):
        load_config([], [f"{spelled}=0.05"])


def test_a_nested_section_at_the_top_level_points_to_its_place(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  name: muon\nmuon:\n  lr: 0.05\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'muon' .*did you mean 'optimizer.muon'\?"):
        load_config([path])


def test_home_in_paths_is_expanded_and_a_numeric_folder_stays_text(tmp_path: Path) -> None:
    """`train.out_dir: ~/runs` made a folder named '~' in the working directory; `--set data.path=2024`
    was an int and refused."""
    cfg = load_config([], ["train.out_dir=~/runs/a", "data.path=~/data", "data.tokenizer=~/t.model",
                           "train.init_from=~/runs/b"])
    home = str(Path.home())
    assert cfg.train.out_dir == f"{home}/runs/a" and cfg.data.path == f"{home}/data"
    assert cfg.data.tokenizer == f"{home}/t.model" and cfg.train.init_from == f"{home}/runs/b"
    assert load_config([], ["data.path=2024"]).data.path == "2024"
    assert load_config([], ["data.path=2024-06-01"]).data.path == "2024-06-01"  # not a YAML date
    numeric = tmp_path / "numeric.yaml"
    numeric.write_text("data:\n  path: 2024\n")
    assert load_config([numeric]).data.path == "2024"  # in a file too
    numeric.write_text("data:\n  path: [0.5, 2024-06-01, 0.5, b]\n")
    assert load_config([numeric]).data.path == [0.5, "2024-06-01", 0.5, "b"]
    with pytest.raises(ConfigError, match="--set model.depth: the value is nested too deeply"):
        load_config([], ["model.depth=" + "[" * 5000 + "]" * 5000])
    assert load_config([], ["data.path=[0.5, ~/a, 0.5, b]"]).data.path == [0.5, f"{home}/a", 0.5, "b"]
    assert load_config([], ["train.seed=0"]).train.seed == 0
    with pytest.raises(ConfigError, match="train.seed"):  # build_datasets refused it only once a run started
        load_config([], ["train.seed=-1"])


def test_text_keys_take_digits_as_text_and_out_dir_is_never_empty() -> None:
    cfg = load_config([], ["wandb.name=123", "train.out_dir=2026", "data.tokenizer=007.model"])
    assert cfg.wandb.name == "123" and cfg.train.out_dir == "2026" and cfg.data.tokenizer == "007.model"
    assert load_config([], ["wandb.name=null"]).wandb.name is None
    with pytest.raises(ConfigError, match="train.out_dir"):
        load_config([], ["train.out_dir="])


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("optimizer.lr=.inf", "optimizer.lr: Input should be a finite number"),
        ("parametrization.alpha=.nan", "parametrization.alpha: Input should be a finite number"),
        ("parametrization.init_std=.inf", "parametrization.init_std"),
        ("optimizer.betas=[1.5, 0.9]", "optimizer.betas.0: Input should be less than 1"),
        ("optimizer.betas=[0.9, -0.1]", "optimizer.betas.1"),
        ("train.out_dir=   ", "train.out_dir must name a directory"),
    ],
)
def test_values_that_would_only_fail_in_training_are_refused(override: str, fragment: str) -> None:
    """inf/nan trained and were reported as a divergence; betas outside [0, 1) failed inside torch after
    the run directory was made; a blank out_dir was taken as a directory name."""
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config([], [override])


def test_yaml_merge_keys_and_bad_includes(tmp_path: Path) -> None:
    """``<<: *anchor`` is valid YAML that safe_load reads (it was refused as an unknown tag); an explicit
    key next to it wins, as YAML says, and is not a duplicate. Malformed includes and keys are one line."""
    path = write(tmp_path, "merge.yaml", "optimizer:\n  <<: &defaults {lr: 0.02, weight_decay: 0.0}\n  lr: 0.1\n")
    cfg = load_config([path])
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.weight_decay == 0.0
    for bad, fragment in (("include: 3\n", "'include' must be a file name"),
                          ("include: [null]\n", "'include' must be a file name"),
                          ("[a]: 2\n", "a key must be a name, not a list")):
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_config([write(tmp_path, "bad.yaml", bad)])


# ---- the same loader on a prep config (megadepth.common.typed_yaml) --------------------------------------


def test_prep_config_names_every_unknown_key_in_one_message(tmp_path: Path) -> None:
    from data_prep.config import load_prep_config

    base = write(tmp_path, "base.yaml", "dedup:\n  band: 20\n")
    path = write(tmp_path, "prep.yaml", "include: base.yaml\nlanguage:\n  treshold: 0.5\nc4:\n  enabled: false\n")
    with pytest.raises(DataError) as info:
        load_prep_config([path], ["threshold=0.5", "extract.engin=trafilatura"])
    message = str(info.value)
    assert message.startswith("4 unknown prep config keys: ") and "\n" not in message
    for fragment in (f"'dedup.band' (in {base}): did you mean 'dedup.bands'?",
                     f"'language.treshold' (in {path}): did you mean 'language.threshold'?",
                     "'threshold' (in --set): did you mean 'language.threshold' (keys live in their section)?",
                     "'extract.engin' (in --set): did you mean 'extract.engine'?"):
        assert fragment in message, fragment
    # prep files include others as config files do; the file wins over its includes, --set over both
    write(tmp_path, "base.yaml", "dedup:\n  bands: 20\n  rows: 4\n")
    cfg = load_prep_config([write(tmp_path, "ok.yaml", "include: [base.yaml]\ndedup:\n  rows: 5\n")],
                           ["dedup.seed=3"])
    assert (cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.seed) == (20, 5, 3)


@pytest.mark.parametrize(("override", "fragment"), [
    ("dedup.bands=[", "--set 'dedup.bands=[': the value is not valid YAML"),
    ("dedup.bands", "--set 'dedup.bands' must look like section.key=value"),
    ("dedup.bands=many", "invalid prep config: dedup.bands: Input should be a valid integer"),
    ("dedup={bands: 20}", "'dedup' is a prep config section, not a key: set its keys one by one, e.g. --set dedup."),
])
def test_prep_config_bad_set_values_are_one_line(override: str, fragment: str) -> None:
    from data_prep.config import load_prep_config

    with pytest.raises(DataError, match=re.escape(fragment)) as info:
        load_prep_config(overrides=[override])
    assert "\n" not in str(info.value)
    # every prep value is YAML: an empty one is null
    assert load_prep_config(overrides=["tokenizer.model="]).tokenizer.model is None


def test_prep_config_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    from data_prep.config import load_prep_config

    path = write(tmp_path, "prep.yaml", "dedup: 20\n")
    with pytest.raises(DataError, match=re.escape(f"prep config key 'dedup' (in {path}) must be a mapping of "
                                                  "exact, minhash, ngram")):
        load_prep_config([path])
    with pytest.raises(DataError, match=re.escape(f"{path}: a prep config file must be a mapping of sections, "
                                                  "got list")):
        load_prep_config([write(tmp_path, "prep.yaml", "- dedup\n")])
