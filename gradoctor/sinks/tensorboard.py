"""TensorBoard events, written from host values only (never forces a device sync).

Tags: ``loss``, ``lr``, ``loss_scale``, ``grad_norm/total``, ``grad_norm/<module>``,
``update_ratio/<module>``, ``memory/*``, ``time/step_s``, ``throughput/samples_per_s``,
``grad_hist/<module>``, ``grad_hist_nonfinite/<module>``. Events are buffered and written
to disk at each ``flush()`` (once per log interval) and at ``close()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto

from gradoctor.sinks.event_file import EventFileWriter

HISTOGRAM_BINS = 64


class TensorBoardSink:
    """``enabled=False`` makes every call a no-op."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.writer = EventFileWriter(log_dir) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Several scalars of one step as one event."""
        if self.writer is not None:
            summary = Summary(
                value=[Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]
            )
            self.writer.add_summary(summary, step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars({tag: value}, step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """A histogram of finite ``values`` (``HISTOGRAM_BINS`` equal-width bins)."""
        if self.writer is None or not values.size:
            return
        values = values.astype(np.float64)
        lo, hi = float(values.min()), float(values.max())
        counts, edges = np.histogram(
            values, bins=HISTOGRAM_BINS, range=(lo, hi) if hi > lo else (lo - 0.5, lo + 0.5)
        )
        proto = HistogramProto(
            min=lo,
            max=hi,
            num=float(values.size),
            sum=float(values.sum()),
            sum_squares=float(np.dot(values, values)),
            bucket_limit=edges[1:].tolist(),
            bucket=counts.astype(np.float64).tolist(),
        )
        self.writer.add_summary(Summary(value=[Summary.Value(tag=tag, histo=proto)]), step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is None:
            return
        metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(
            dtype=7,
            string_val=[text.encode()],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        self.writer.add_summary(
            Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)]), step
        )

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
