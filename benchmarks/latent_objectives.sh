#!/bin/bash
# Issue 20: do latent-noise training or the behavioural loss make SANE's latent neighbourhoods
# and paths keep function? One SANE per variant, then for each: the novelty-quality frontier
# (`sane sample --bandwidth ...`, test accuracy against distance beside per-tensor and
# isotropic noise, selected on validation) around training models and around models held
# out from pretraining (--prompt-split test), latent against weight paths plus zero-shot
# priors (benchmarks/bench_latent_paths.py) and the probes (`sane probe`: does property
# prediction regress?). Finished steps are reused.
#
#   benchmarks/latent_objectives.sh [VARIANT ...]                 digits seed zoo
#   ZOO=fmnist-seed benchmarks/latent_objectives.sh [VARIANT ...]  fmnist-seed
#
# A variant is noise-X (--latent-noise X) or behaviour-X (--behaviour X).
# - digits: a seed zoo of 100 CNN-s (5 epochs), each SANE the cpu preset for 30 epochs
#   (batch 16, bf16); 10 prompts, the best on validation, 30 draws, 10 kept. Results in
#   runs/digits-seed/: sane-VARIANT/report.md (the decoded models' fidelity),
#   frontier-sane-VARIANT/frontier.md, heldout-frontier-sane-VARIANT/frontier.md,
#   paths-sane-VARIANT.md (training models), heldout-paths-sane-VARIANT.md (test-split
#   models), probe-sane-VARIANT/probes.md. Then
#   benchmarks/latent_objectives_summary.py puts them side by side and names the winner.
# - fmnist-seed: the store of `sane reproduce --scale fmnist-seed`, each SANE as that
#   command pretrains it (100 epochs, batch 32, bf16; noise-0 *is* its SANE); the first 10
#   training models as prompts, 50 draws, 10 kept, as its frontier stage; and transfer to
#   cnn_s_wide and cnn_s_deep from that command's 3 prompts each. Runs in
#   runs/fmnist-seed-VARIANT, results in runs/fmnist-seed-latent/.
# Each process runs on one thread (two side by side on 2 cores; see docs/scaling.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
SANE=".venv/bin/sane"
ZOO=${ZOO:-digits}
case $ZOO in
  digits)
    D=runs/digits-seed
    STORE=$D/store
    TRAIN="--epochs 30 --batch-size 16"
    PROMPTS="--best-prompts --prompts 10 --samples 30 --keep 10"
    test -f $D/zoo/zoo.json || $SANE zoo train benchmarks/configs/digits-cnn-s-seed-100.toml --out $D/zoo
    test -f $STORE/store.json || $SANE prepare $D/zoo --out $STORE --align --max-abs 100 ;;
  fmnist-seed)
    D=runs/fmnist-seed-latent
    STORE=runs/reproduce-fmnist-seed/store
    TRAIN="--epochs 100 --batch-size 32"
    PROMPTS="--prompts 10 --samples 50 --keep 10"
    test -f runs/reproduce-fmnist-seed/sane/ood.json || \
      { echo "run sane reproduce --scale fmnist-seed first" >&2; exit 2; } ;;
  *) echo "ZOO is digits or fmnist-seed, not $ZOO" >&2; exit 2 ;;
esac
mkdir -p $D
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(noise-0 noise-0.1 noise-1 behaviour-0.03 behaviour-0.1 behaviour-0.3)

for v in "${VARIANTS[@]}"; do
  case $v in
    noise-*) flag="--latent-noise ${v#noise-}" ;;
    behaviour-*) flag="--behaviour ${v#behaviour-}" ;;
    *) echo "unknown variant $v (noise-X or behaviour-X)" >&2; exit 2 ;;
  esac
  run=$D/sane-$v
  if [ $ZOO = fmnist-seed ]; then
    run=runs/fmnist-seed-$v
    [ $v = noise-0 ] && run=runs/reproduce-fmnist-seed/sane
  fi
  echo "== $v: pretrain $(date +%T)"
  test -f $run/ood.json || $SANE pretrain $STORE --out $run $TRAIN --precision bf16 $flag \
    > $D/pretrain-$v.log 2>&1
  echo "== $v: frontier $(date +%T)"
  test -f $D/frontier-sane-$v/frontier.md || $SANE sample $run --out $D/frontier-sane-$v \
    $PROMPTS --bandwidth 0.1,0.25,0.5,1 > $D/frontier-sane-$v.log 2>&1
  echo "== $v: frontier around held-out prompts $(date +%T)"
  test -f $D/heldout-frontier-sane-$v/frontier.md || $SANE sample $run \
    --out $D/heldout-frontier-sane-$v --prompt-split test $PROMPTS \
    --bandwidth 0.1,0.25,0.5,1 > $D/heldout-frontier-sane-$v.log 2>&1
  echo "== $v: paths $(date +%T)"
  test -s $D/paths-sane-$v.md || .venv/bin/python benchmarks/bench_latent_paths.py $run \
    --pairs 10 --samples 20 > $D/paths-sane-$v.md
  test -s $D/heldout-paths-sane-$v.md || .venv/bin/python benchmarks/bench_latent_paths.py \
    $run --pairs 10 --samples 20 --split test > $D/heldout-paths-sane-$v.md
  echo "== $v: probe $(date +%T)"
  test -f $D/probe-sane-$v/probes.md || $SANE probe $run --out $D/probe-sane-$v \
    > $D/probe-sane-$v.log 2>&1
  if [ $ZOO = fmnist-seed ]; then  # transfer, as the reproduction's stage does (one seed)
    for arch in cnn_s_wide cnn_s_deep; do
      echo "== $v: transfer to $arch $(date +%T)"
      test -f $D/transfer-$arch-$v/samples.md || $SANE sample $run --out $D/transfer-$arch-$v \
        --prompts-from runs/reproduce-fmnist-seed/transfer-$arch/zoo --prompts 3 --samples 50 \
        --keep 10 > $D/transfer-$arch-$v.log 2>&1
    done
  fi
done
echo "== done $(date +%T)"
