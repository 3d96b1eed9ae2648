"""The data layer: Megatron indexed shards, GPT sample index, blending, and the data-parallel sampler.

Data flows: shards on disk (:mod:`~megadepth.data.indexed`) -> documents of one directory
(:class:`DocumentCorpus`) -> fixed-length samples (:class:`GPTDataset`) -> optional weighted mix
(:class:`BlendedDataset`) -> per-rank micro-batches positioned by consumed samples
(:class:`MicroBatchSampler`, :func:`make_loader`). :func:`build_datasets` wires it from ``data.path``.
"""

from megadepth.common.errors import DataError
from megadepth.data.blend import BlendedDataset, blend_schedule
from megadepth.data.builder import (
    build_datasets,
    data_fingerprint,
    find_tokenizer,
    parse_data_path,
    read_data_manifest,
)
from megadepth.data.indexed import (
    IndexedDataset,
    IndexedDatasetWriter,
    best_dtype,
    bin_path,
    idx_path,
    index_exists,
)
from megadepth.data.sample_index import DocumentCorpus, GPTDataset, split_documents
from megadepth.data.sampler import MicroBatchSampler, collate_samples, make_loader

__all__ = ["BlendedDataset", "DataError", "DocumentCorpus", "GPTDataset", "IndexedDataset",
           "IndexedDatasetWriter", "MicroBatchSampler", "best_dtype", "bin_path", "blend_schedule",
           "build_datasets", "collate_samples", "data_fingerprint", "find_tokenizer", "idx_path",
           "index_exists", "make_loader", "parse_data_path", "read_data_manifest", "split_documents"]
