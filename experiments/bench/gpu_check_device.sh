#!/usr/bin/env bash
# The GPU check on a lent GPU machine that cannot reach a package index. Its python3 holds torch,
# Lightning, torchmetrics and pytest but not Hydra/OmegaConf, so those travel as files:
#
#   here:            bash experiments/bench/gpu_check_device.sh prepare    # fills .devsite/ (git-ignored)
#   on the machine:  bash experiments/bench/gpu_check_device.sh run        # carry [".devsite"]; about 6 min
#   here, after:     python experiments/bench/gpu_check.py --adopt <returned RESULTS.md>
#
# `run` writes the logs to /tmp/gpu_check and copies what fits the transfer (8 files) into $OUT:
# RESULTS.md, gpu_check.log, results.json, the four step logs and logs.tar.gz (everything but checkpoints).
set -uo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
prepare)
    site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf .devsite && mkdir .devsite
    for pattern in hydra hydra_core-*.dist-info omegaconf omegaconf-*.dist-info antlr4 \
        antlr4_python3_runtime-*.dist-info; do
        cp -r "$site"/$pattern .devsite/
    done
    du -sh .devsite
    ;;
run)
    # the repo root too: the app runs start in their run dirs, and the fallback below installs nothing
    export PYTHONPATH="$PWD:$PWD/.devsite${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    python3 -c 'import hydra, omegaconf' || { echo "Hydra/OmegaConf missing: run 'prepare' here and carry .devsite"; exit 2; }
    if ! python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
        echo "pip could not install lsa_train: falling back to a link lsa_train/conf -> conf"
        ln -sfn ../conf lsa_train/conf
    fi
    logs=/tmp/gpu_check
    rm -rf "$logs"
    python3 experiments/bench/gpu_check.py --log-dir "$logs"
    status=$?
    out=${OUT:-experiments/bench/outputs/gpu_check_device}
    mkdir -p "$out"
    for name in RESULTS.md gpu_check.log results.json bench.log pytest.log bf16.log ddp.log; do
        [ -f "$logs/$name" ] && cp "$logs/$name" "$out/"
    done
    tar -czf "$out/logs.tar.gz" --exclude='*.ckpt' -C "$(dirname "$logs")" "$(basename "$logs")"
    exit "$status"
    ;;
*)
    echo "usage: bash experiments/bench/gpu_check_device.sh prepare|run" >&2
    exit 2
    ;;
esac
