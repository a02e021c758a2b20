#!/usr/bin/env bash
# One script for a GPU machine: the CUDA-only tests, the GPU benchmarks, a compact table.
#   bash bench/gpu_check.sh            (from the repo root; gradoctor need not be installed)
# Writes logs under ${OUT:-bench/out}. Sections are skipped once ${BUDGET_S:-360} s have passed,
# most important first, so the script fits a short GPU lease.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-bench/out}"
BUDGET_S="${BUDGET_S:-360}"
mkdir -p "$OUT"
section() {  # section NAME: false when the time budget is spent
  if [ "$SECONDS" -gt "$BUDGET_S" ]; then echo "== $1: skipped (budget ${BUDGET_S}s spent)"; return 1; fi
  echo "== $1  [t=${SECONDS}s]"
}
python -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

section "CUDA tests (pytest -m cuda)" &&
  timeout 200 python -m pytest -q -m cuda -p no:cacheprovider tests 2>&1 | tee "$OUT/cuda_tests.log" | tail -n 25

[ -f bench/memory_accuracy.py ] && section "memory-profile: predicted vs measured peak (goal within 5%)" &&
  timeout 150 python bench/memory_accuracy.py 2>&1 | tail -n 40

section "distributed: world size 1 over NCCL (torchrun, DDP)" &&
  timeout 90 python -m torch.distributed.run --standalone --nproc-per-node 1 -m gradoctor train recipes/mlp.yaml -q train.device=cuda distributed.strategy=ddp train.steps=50 "output.dir=$OUT/runs/ddp_nccl" 2>&1 | tail -n 5 && python -c "import json,sys; d=json.load(open(sys.argv[1])); print('ddp/nccl', d['status'], d['distributed']['backend'], 'world', d['distributed']['world_size'], 'peak', d['distributed']['memory_per_rank'][0]['device_peak'])" "$OUT/runs/ddp_nccl/report.json"

section "overhead: plain loop vs gradoctor, interleaved (goal <= 1.03)" &&
  timeout 150 python bench/overhead.py --gpu --rounds 6 --block 20 --warmup 10 --json "$OUT/overhead_gpu.json"

section "shipped recipes on CUDA" &&
for r in mlp cnn tiny_lm; do
  timeout 60 python -m gradoctor train "recipes/$r.yaml" -q train.device=cuda "output.dir=$OUT/runs/$r" >/dev/null 2>"$OUT/train_$r.err"
  python - "$OUT/runs/$r/report.json" "$r" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); m = d["memory"]; t = d["throughput"]
mib = lambda b: f"{b / 2**20:.1f}" if isinstance(b, int) else "-"
codes = ",".join(x["code"] for x in d["diagnoses"] if x["severity"] != "info") or "healthy"
print(f"{sys.argv[2]:<8} {d['status']:<9} {d['precision']:<5} steps {d['steps_completed']:>4}  loss {d['history']['loss'][0]:.3f} -> {d['final_loss']:.3f}  "
      f"{1000 * t['step_s']:.2f} ms/step  peak MiB fwd {mib(m['forward_peak'])} bwd {mib(m['backward_peak'])} opt {mib(m['optimizer_peak'])}  skipped {len(d['skipped_steps'])}  {codes}")
PY
done

section "NaN replay cost vs a normal step" &&
  timeout 90 python bench/replay_cost.py --gpu 2>&1 | grep -v "^\s*$" | tail -n 4

section "HVP cost vs a gradient (curvature)" &&
  timeout 120 python bench/hvp_cost.py --gpu --rounds 7 2>&1 | tail -n 6

section "repro: recorded step vs plain step (goal <= 2)" &&
  timeout 120 python bench/repro_cost.py --gpu --rounds 3 2>&1 | tail -n 4

section "audit: the detector's step vs a plain step (goal <= 3); precision audit in steps" &&
  timeout 120 python bench/audit_cost.py --gpu --rounds 3 2>&1 | tail -n 4

section "explain: evaluations and ms per example, IG auto vs fixed" &&
  timeout 120 python bench/explain_cost.py --gpu --samples 32 --train-steps 100 2>&1 | grep -v Warn | tail -n 30

section "torchvision false-alarm suite (skips where torchvision does not import)" &&
  timeout 150 python -m pytest -q -p no:cacheprovider tests/diagnose/test_real_architectures.py -k torchvision 2>&1 | tail -n 3

[ -f bench/checkgrads_speed.py ] && section "check-grads speed" &&
  timeout 60 python bench/checkgrads_speed.py 2>&1 | tail -n 12
echo "== done in ${SECONDS}s"
