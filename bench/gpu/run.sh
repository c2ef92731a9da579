#!/usr/bin/env bash
# The GPU run, prepared on a CPU so a lent device spends its minutes measuring (issue 27):
#   on the device:  bash bench/gpu/run.sh          (carry .whl, made by bench/gpu/wheelhouse.sh)
#   dry run here:   DRY_RUN=1 OUT=/tmp/gpu bash bench/gpu/run.sh   (tiny model, CPU, same plumbing)
# Each part has its own time cap, so the whole ends within 9 minutes; logs, results (JSON) and
# summary.txt land in $OUT even when a part fails.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/tunesmith-gpu}
mkdir -p "$OUT"
DRY=${DRY_RUN:-}
PY=${PYTHON:-$([ -n "$DRY" ] && echo .venv/bin/python || echo python3)}
if [ -z "$DRY" ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/install.log" 2>&1 || echo "installing the carried wheels failed: see install.log"
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD/src:$PWD/tests:${PYTHONPATH:-}  # tunesmith from the tree: nothing to build there
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
: > "$OUT/summary.txt"

step() {  # NAME CAP_SECONDS COMMAND...: run it under its cap, log to $OUT/NAME.log, say how it ended
  local name=$1 cap=$2 t0
  shift 2
  t0=$(date +%s)
  echo "== $name (cap ${cap}s)"
  timeout --kill-after=15 "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - t0 ))s$([ $rc = 124 ] && echo ' (hit its cap)')" | tee -a "$OUT/summary.txt"
  tail -n 30 "$OUT/$name.log"
}

step versions 60 "$PY" -c '
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
for name in ("transformers", "datasets", "trl", "peft", "accelerate", "pydantic", "tokenizers", "liger_kernel", "bitsandbytes", "flash_attn", "triton"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), m.__file__)
    except Exception as e:
        print(name, "missing:", type(e).__name__, str(e)[:120])
import tunesmith; print("tunesmith", tunesmith.__file__)
'
step gpu-tests "${CAP_TESTS:-120}" "$PY" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider -rs

BENCH=("$PY" bench/train_speed.py --precision native --cap-gb 100)
[ -d .whl/tokenizer ] && BENCH+=(--tokenizer .whl/tokenizer)
if [ -n "$DRY" ]; then  # the same two benchmark parts on a tiny model, seconds each
  step full-1b 240 "${BENCH[@]}" --models tiny --examples 24 --max-length 128 --batch 4 --limit-min 2 \
    --configs "tunesmith default" "trl padded" --json "$OUT/full-1b.json"
  step qlora-8b 240 "${BENCH[@]}" --models tiny --method lora --examples 24 --max-length 128 --batch 4 --limit-min 2 \
    --configs "tunesmith default" "trl padded" --json "$OUT/qlora-8b.json"
else
  # bf16 full fine-tuning of a Llama-3.2-1B-shaped model at 2,048 tokens: tunesmith default and packed
  # against TRL padded, packed (padding-free) and packed with Liger (TRL's fastest on a GPU)
  step full-1b 270 "${BENCH[@]}" --models llama1b --examples 3000 --max-length 2048 --batch 8 --limit-min 0.85 \
    --configs "tunesmith default" "tunesmith packed" "trl padded" "trl packed" "trl packed liger" --json "$OUT/full-1b.json"
  # QLoRA (4-bit NF4 base, LoRA r=16 on every linear layer) on Llama-3.1-8B's widths
  step qlora-8b 130 "${BENCH[@]}" --models llama8b-slice --method qlora --examples 1000 --max-length 1024 --batch 8 \
    --limit-min 0.6 --configs "tunesmith default" "trl packed" "trl packed liger" --json "$OUT/qlora-8b.json"
fi
# The tables, one file: what the note and docs/performance.md quote.
{ for part in full-1b qlora-8b; do echo "## $part"; sed -n '/^native precision here/,$p' "$OUT/$part.log" 2>/dev/null; done; } > "$OUT/table.md"
cat "$OUT/summary.txt"
