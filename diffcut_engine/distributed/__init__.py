"""Dataset-scale segmentation on Ray Data (``diffcut batch``; ``pip install 'diffcut-engine[ray]'``).

- :mod:`~diffcut_engine.distributed.items`: inputs -> work items (images; video files split into frame ranges);
- :mod:`~diffcut_engine.distributed.worker`: :class:`SegmentWorker`, one engine per actor, atomic outputs, retries;
- :mod:`~diffcut_engine.distributed.manifest`: the Parquet manifest, its journal and the configuration hash that
  makes a run resumable;
- :mod:`~diffcut_engine.distributed.pipeline`: :func:`run_batch`, the Ray Data pipeline.

Only :mod:`.pipeline` imports Ray; listing, manifest and worker run without it.
"""

from .items import WorkItem, list_items
from .manifest import completed_items, config_hash, read_manifest
from .pipeline import BatchSummary, run_batch
from .worker import SegmentWorker

__all__ = ["WorkItem", "list_items", "config_hash", "read_manifest", "completed_items", "BatchSummary",
           "run_batch", "SegmentWorker"]
