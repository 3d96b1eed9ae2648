"""Weights & Biases, offline by default (`wandb sync` uploads later); only rank 0 logs. megadepth never
reads, passes or writes the API key: online mode uses whatever `wandb login` stored.
"""

from __future__ import annotations

import secrets
import string
from pathlib import Path
from typing import Any

from megadepth.common.io import atomic_write_text
from megadepth.config.schema import WandbConfig


class Tracker:
    """A thin wrapper so the training loop does not care whether W&B is on."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any], enabled: bool,
                 id_file: Path | None = None) -> None:
        """``id_file`` keeps the W&B run id, so a resumed run continues the same W&B run."""
        self.run = None
        if not enabled or cfg.mode == "disabled":
            return
        import wandb  # imported lazily: slow, and absent on some benchmark images

        run_id = None
        if id_file is not None:
            run_id = id_file.read_text().strip() if id_file.is_file() else None
            if not run_id:
                run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
                atomic_write_text(id_file, run_id + "\n")
        self.run = wandb.init(
            id=run_id, resume="allow" if run_id else None, project=cfg.project, group=cfg.group,
            name=cfg.name or run_dir.resolve().name, tags=list(cfg.tags), mode=cfg.mode, dir=str(run_dir),
            config=config, settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def summary(self, data: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in data.items():
                self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
