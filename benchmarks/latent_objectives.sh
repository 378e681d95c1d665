#!/bin/bash
# Issue 20: do latent-noise training or the behavioural loss make SANE's latent neighbourhoods
# and paths keep function? On a digits seed zoo (100 CNN-s, 5 epochs), one SANE per variant
# (the cpu preset, 30 epochs, batch 16, bf16), then for each: the novelty-quality frontier
# (`sane sample --bandwidth ...`, test accuracy against distance beside per-tensor and
# isotropic noise, selected on validation), latent against weight paths plus zero-shot
# priors (benchmarks/bench_latent_paths.py) and the probes (`sane probe`: does property
# prediction regress?). Finished steps are reused.
#
#   benchmarks/latent_objectives.sh [VARIANT ...]     (default: all four below)
#
# A variant is noise-X (--latent-noise X) or behaviour-X (--behaviour X). Results land in
# runs/digits-seed/: frontier-sane-VARIANT/frontier.md, paths-sane-VARIANT.md and
# probe-sane-VARIANT/probes.md; the decoded models' fidelity in sane-VARIANT/report.md. Each
# process runs on one thread (two side by side on 2 cores; see docs/scaling.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
SANE=".venv/bin/sane"
D=runs/digits-seed
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(noise-0 noise-0.1 noise-1 behaviour-0.03 behaviour-0.1 behaviour-0.3)

test -f $D/zoo/zoo.json || $SANE zoo train benchmarks/configs/digits-cnn-s-seed-100.toml --out $D/zoo
test -f $D/store/store.json || $SANE prepare $D/zoo --out $D/store --align --max-abs 100

for v in "${VARIANTS[@]}"; do
  case $v in
    noise-*) flag="--latent-noise ${v#noise-}" ;;
    behaviour-*) flag="--behaviour ${v#behaviour-}" ;;
    *) echo "unknown variant $v (noise-X or behaviour-X)" >&2; exit 2 ;;
  esac
  run=$D/sane-$v
  echo "== $v: pretrain $(date +%T)"
  test -f $run/ood.json || $SANE pretrain $D/store --out $run --epochs 30 --batch-size 16 \
    --precision bf16 $flag > $D/pretrain-$v.log 2>&1
  echo "== $v: frontier $(date +%T)"
  test -f $D/frontier-sane-$v/frontier.md || $SANE sample $run --out $D/frontier-sane-$v \
    --best-prompts --prompts 10 --samples 30 --keep 10 --bandwidth 0.1,0.25,0.5,1 \
    > $D/frontier-sane-$v.log 2>&1
  echo "== $v: paths $(date +%T)"
  test -s $D/paths-sane-$v.md || .venv/bin/python benchmarks/bench_latent_paths.py $run \
    --pairs 10 --samples 20 > $D/paths-sane-$v.md
  echo "== $v: probe $(date +%T)"
  test -f $D/probe-sane-$v/probes.md || $SANE probe $run --out $D/probe-sane-$v \
    > $D/probe-sane-$v.log 2>&1
done
echo "== done $(date +%T)"
