"""Run real training steps of a recipe in chosen configurations and measure their memory.

A configuration is (precision, modules to checkpoint, micro-batch size). The step is the
training step (``gradoctor.training.step.TrainStep``, the one the loop runs) with the
profiler's own instrument instead of the loop's: ``accum_steps`` micro-batches of autocast
forward + scaled backward, then unscale / clip / step / update / ``zero_grad(set_to_none=True)``. The model and optimizer are shared by every configuration,
so after the first step the optimizer state exists (steady state), as in a long run.

Batch size is changed through the data component's ``batch_size`` keyword: the component is
built again with ``batch_size=N`` (and cached). A component that does not accept it, or that
yields batches of another size, is measured only at the recipe's batch size.

CUDA: the allocator's peak (``max_memory_allocated``) is read per phase (reset at each phase
boundary; host-side counters, no device sync). One ``synchronize`` per step, for its time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gradoctor.errors import GradoctorError, UserCodeError
from gradoctor.memory.tracking import StepTrace, StepTracker
from gradoctor.monitors.grad_norms import GradNormRecorder, ParamIndex
from gradoctor.monitors.instrument import Instrument, StepView
from gradoctor.recipe.components import call_user, resolve_target, user_frames
from gradoctor.recipe.schema import Recipe
from gradoctor.training.activation_checkpointing import apply_checkpointing
from gradoctor.training.batches import batch_size as batch_size_of
from gradoctor.training.batches import compute_loss, to_device
from gradoctor.training.build import build_components
from gradoctor.training.data_stream import DataStream
from gradoctor.training.environment import pick_device, seed_everything
from gradoctor.training.precision import autocast, make_scaler
from gradoctor.training.state import TrainState
from gradoctor.training.step import StepConfig, TrainStep


@dataclass(frozen=True)
class Config:
    """One what-if configuration; ``checkpoint`` holds recipe-style names (class or qualified)."""

    precision: str
    checkpoint: tuple[str, ...]
    batch_size: int


@dataclass
class StepMeasurement:
    config: Config
    seconds: float  # wall time of the step (device-synchronized on CUDA)
    trace: StepTrace | None = None  # tracked steps only
    cuda_peak: int | None = None  # max_memory_allocated over the step
    cuda_phase_peaks: dict[str, int] = field(default_factory=dict)
    cuda_start: int | None = None  # memory_allocated when the step began
    module_seconds: dict[str, float] = field(default_factory=dict)  # inclusive forward time
    forward_seconds: float = 0.0

    @property
    def tracked_peak(self) -> int | None:
        return self.trace.peak()[0] if self.trace is not None else None

    @property
    def measured_peak(self) -> int | None:
        """The self-check's measured quantity: CUDA allocator peak, else tracked bytes."""
        return self.cuda_peak if self.cuda_peak is not None else self.tracked_peak


class ProfileSession:
    """The recipe's components, built once; ``step(config)`` runs one real training step."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.device = pick_device(recipe.train.device)
        self.cuda = self.device.type == "cuda"
        seed_everything(recipe.train.seed)
        parts = build_components(recipe, self.device)
        self.model, self.optimizer, self.loss_fn = parts.model, parts.optimizer, parts.loss_fn
        self.model.train()
        self._data: dict[int | None, Any] = {None: parts.data}
        self._iters: dict[int | None, Iterator[Any]] = {}
        self._scalers: dict[str, torch.amp.GradScaler] = {}
        first = self._next(None)
        self.recipe_batch_size = batch_size_of(first) or 1
        self.profiled_batch_size = self.recipe_batch_size  # smaller when the recipe's OOMs
        self._data[self.recipe_batch_size] = parts.data
        self._iters[self.recipe_batch_size] = self._iters.pop(None)
        self._resizable: bool | None = None
        self.accum = recipe.train.accum_steps
        self._stream = DataStream(parts.data)  # the state's stream; batches come from _next
        self._norms = GradNormRecorder(ParamIndex(self.model), self.device)  # for clipping

    # ---- data -----------------------------------------------------------------------------
    def _next(self, size: int | None) -> Any:
        """The next batch of ``size`` samples (any size for ``None``). A batch of another size
        (the short last batch of an epoch) is skipped: every measured step of a configuration
        must see its batch size."""
        it = self._iters.get(size)
        restarts = skipped = 0
        while True:
            if it is None:
                it = self._iters[size] = iter(self._data[size])
            try:
                batch = next(it)
            except StopIteration:
                if restarts:
                    raise UserCodeError(
                        "the data component yielded no batches"
                        if not skipped
                        else f"the data component yielded no batch of {size} samples"
                    ) from None
                it, restarts = None, restarts + 1
                continue
            if size is None or batch_size_of(batch) in (0, size):
                return batch
            skipped += 1
            if skipped > 10_000:
                raise UserCodeError(f"the data component yields no batch of {size} samples")

    def can_resize(self, size: int) -> bool:
        """Whether the data component builds batches of ``size`` via its batch_size keyword."""
        if size in self._data:
            return True
        # Keep only the recipe's component, the profiled size's and this one: a component may
        # hold its data on the device (a DataLoader over CUDA tensors), which would otherwise
        # pile up across sizes.
        keep = (None, self.recipe_batch_size, self.profiled_batch_size)
        for old in [k for k in self._data if k not in keep]:
            self._data.pop(old)
            self._iters.pop(old, None)
        spec = self.recipe.data
        try:
            target = resolve_target(spec.target, self.recipe.base_dir)
            data = call_user(
                target, what=f"data '{spec.target}'", **{**spec.kwargs, "batch_size": size}
            )
            self._data[size] = data
            batch = self._next(size)
        except Exception:
            self._data.pop(size, None)
            return False
        if batch_size_of(batch) != size:
            self._data.pop(size, None)
            self._iters.pop(size, None)
            return False
        return True

    def _scaler(self, precision: str) -> torch.amp.GradScaler:
        """fp16 scaler for profiling, starting at scale 1 and never growing: the profiled steps
        must be *applied* steps (a skipped calibration step creates no optimizer state, e.g.
        SGD's momentum, and would under-predict the steady state). The scale's value changes
        no tensor sizes."""
        if precision not in self._scalers:
            config = dataclasses.replace(
                self.recipe.grad_scaler, init_scale=1.0, growth_interval=2**30
            )
            self._scalers[precision] = make_scaler(precision, self.device, config)
        return self._scalers[precision]

    # ---- one step -------------------------------------------------------------------------
    def step(
        self,
        config: Config,
        *,
        track: bool = False,
        time_modules: bool = False,
        saves: bool = True,
    ) -> StepMeasurement:
        """One optimizer step in ``config``. Raises torch.OutOfMemoryError as is (callers decide),
        UserCodeError when the user's code raises."""
        undo = apply_checkpointing(self.model, list(config.checkpoint))
        try:
            return self._step(config, track, time_modules, saves)
        except (GradoctorError, torch.OutOfMemoryError):
            raise
        except Exception as exc:
            raise UserCodeError(
                f"a profiled training step ({config.precision}, batch {config.batch_size}) raised "
                f"{type(exc).__name__}: {exc}",
                user_traceback=user_frames(exc),
            ) from exc
        finally:
            undo()
            self.optimizer.zero_grad(set_to_none=True)

    def _step(
        self, config: Config, track: bool, time_modules: bool, saves: bool = True
    ) -> StepMeasurement:
        """The training step itself (``training.step.TrainStep``), with the profiler's
        instrument: phase peaks, the tracker's phases and the forward timer."""
        device = self.device
        tracker = StepTracker(self.model, self.optimizer, device, saves=saves) if track else None
        out = StepMeasurement(config, 0.0)
        timer = _ModuleTimer(self.model, self.cuda) if time_modules else None
        probe = _ProfileInstrument(self, out, tracker, timer)
        state = TrainState(
            model=self.model,
            optimizer=self.optimizer,
            scaler=self._scaler(config.precision),
            scheduler=None,
            loss_fn=self.loss_fn,
            data=self._stream,
            device=device,
        )
        step_config = StepConfig(config.precision, self.accum, self.recipe.train.clip_grad_norm)
        stepper = TrainStep(state, step_config, norms=self._norms, fetch=probe.fetcher(config))
        if self.cuda:
            torch.cuda.synchronize(device)
            out.cuda_start = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        try:
            with tracker.tracking() if tracker else contextlib.nullcontext():
                stepper.run([probe])
        finally:
            stepper.close()
        if self.cuda:
            torch.cuda.synchronize(device)  # the step's one sync: its time and the event timers
        out.seconds = time.perf_counter() - t0
        if tracker:
            out.trace = tracker.finish(probe.grads, probe.state)
        if out.cuda_phase_peaks:
            out.cuda_peak = max(out.cuda_phase_peaks.values())
        if timer:
            out.module_seconds, out.forward_seconds = timer.result()
        return out

    @contextlib.contextmanager
    def _phase(
        self, out: StepMeasurement, tracker: StepTracker | None, name: str, micro: int
    ) -> Iterator[None]:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            if tracker:
                tracker.device_peak = 0
        with tracker.in_phase(name, micro) if tracker else contextlib.nullcontext():
            yield
        if self.cuda:  # the tracker resets the peak around each op: combine with its maximum
            peak = torch.cuda.max_memory_allocated(self.device)
            if tracker:
                peak = max(peak, tracker.device_peak)
            out.cuda_phase_peaks[name] = max(out.cuda_phase_peaks.get(name, 0), peak)

    # ---- forward FLOPs and the CUDA snapshot ----------------------------------------------
    def forward_pass(self, config: Config, flops: bool = True) -> tuple[dict[str, int], StepTrace]:
        """One no-grad forward (about a third of a step), tracked: how long each tensor lives
        when autograd keeps none of them, as inside a checkpointed module's forward. With
        ``flops``, also the forward FLOPs per module qualified name (inclusive; ``""`` is the
        whole model) from ``FlopCounterMode``."""
        from torch.utils.flop_counter import FlopCounterMode

        batch = to_device(self._next(config.batch_size), self.device)
        tracker = StepTracker(self.model, None, self.device, saves=False)
        counter = FlopCounterMode(display=False) if flops else None
        with (
            torch.no_grad(),
            autocast(config.precision, self.device),
            tracker.tracking(),
            tracker.in_phase("forward", 0),
            counter if counter is not None else contextlib.nullcontext(),
        ):
            compute_loss(self.model, batch, self.loss_fn)
        per_module: dict[str, int] = {}
        if counter is not None:
            root = type(self.model).__name__
            for name, by_op in counter.get_flop_counts().items():
                if name == "Global":
                    continue
                qname = "" if name == root else name.removeprefix(root + ".")
                per_module[qname] = int(sum(by_op.values()))
        return per_module, tracker.finish(set(), set())

    def snapshot(self, config: Config, path: str) -> None:
        """One step under ``torch.cuda.memory._record_memory_history``; writes the pickle that
        https://pytorch.org/memory_viz opens (private API, stable since torch 2.1)."""
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        try:
            self.step(config)
        finally:
            torch.cuda.memory._dump_snapshot(path)
            torch.cuda.memory._record_memory_history(enabled=None)


class _ProfileInstrument(Instrument):
    """The profiler's instrument: each phase's CUDA peak and the tracker's phase (data,
    forward, backward per micro-batch; optimizer once), the forward timer, and the keys of
    the gradients (before the optimizer phase) and of the optimizer state (after its step)."""

    name = "memory_profile"

    def __init__(
        self,
        session: ProfileSession,
        out: StepMeasurement,
        tracker: StepTracker | None,
        timer: _ModuleTimer | None,
    ):
        self.session, self.out, self.tracker, self.timer = session, out, tracker, timer
        self.grads: set[int] = set()
        self.state: set[int] = set()

    def _phase(self, name: str, micro: int) -> contextlib.AbstractContextManager[None]:
        return self.session._phase(self.out, self.tracker, name, micro)

    def fetcher(self, config: Config) -> Callable[[], Any]:
        """The step's batch source: the next batch of the configuration's size, fetched and
        moved to the device inside the ``data`` phase."""
        calls = iter(range(10**9))
        get = functools.partial(self.session._next, config.batch_size)

        def fetch() -> Any:
            with self._phase("data", next(calls) % self.session.accum):
                host = self.tracker.fetch(get) if self.tracker else get()
                batch = to_device(host, self.session.device)
                del host  # before the phase ends, as the device copy's peak is read
                return batch

        return fetch

    @contextlib.contextmanager
    def _forward(self, micro: int) -> Iterator[None]:
        with self._phase("forward", micro):
            with self.timer.forward() if self.timer else contextlib.nullcontext():
                yield

    def forward(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self._forward(view.micro)

    def backward(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self._phase("backward", view.micro)

    @contextlib.contextmanager
    def _optimizer(self, view: StepView) -> Iterator[None]:
        if self.tracker:
            self.grads = self.tracker.keys_of(p.grad for p in view.model.parameters())
        with self._phase("optimizer", 0):
            yield

    def optimizer(self, view: StepView) -> contextlib.AbstractContextManager[None]:
        return self._optimizer(view)

    def after_update(self, view: StepView) -> None:
        if self.tracker:
            opt = view.optimizer
            self.state = self.tracker.keys_of(v for s in opt.state.values() for v in s.values())


class _ModuleTimer:
    """Inclusive forward time per module qualified name (CUDA events or ``perf_counter``)."""

    def __init__(self, model: torch.nn.Module, cuda: bool):
        self.model, self.cuda = model, cuda
        self.marks: list[tuple[str, Any, Any]] = []
        self._open: list[tuple[str, Any]] = []
        self.totals: list[tuple[Any, Any]] = []

    def _now(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def _elapsed(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        handles = []
        for qname, module in self.model.named_modules():
            handles.append(
                module.register_forward_pre_hook(
                    lambda *_, q=qname: self._open.append((q, self._now()))
                )
            )
            handles.append(module.register_forward_hook(self._close, always_call=True))
        start = self._now()
        try:
            yield
        finally:
            self.totals.append((start, self._now()))
            for handle in handles:
                handle.remove()

    def _close(self, *_: Any) -> None:
        if self._open:
            qname, start = self._open.pop()
            self.marks.append((qname, start, self._now()))

    def result(self) -> tuple[dict[str, float], float]:
        seconds: dict[str, float] = {}
        for qname, start, end in self.marks:
            seconds[qname] = seconds.get(qname, 0.0) + self._elapsed(start, end)
        total = sum(self._elapsed(start, end) for start, end in self.totals)
        return seconds, total
