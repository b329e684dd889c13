#!/usr/bin/env bash
# The newcomer walkthrough (issue 21), timed per step: a fresh clone of this repository, then only
# the commands of docs/datasets.md "Bring your own data in 5 minutes" on a 300-photo folder.
#   bash scripts/newcomer_run.sh PHOTOS_DIR [WORK_DIR]
# PHOTOS_DIR: a folder with images/, labels.csv, groups.yaml (scripts/clothing_folder.py makes one)
set -euo pipefail
photos=$(realpath "$1"); work=${2:-/tmp/apcnn-newcomer}
repo=$(cd "$(dirname "$0")/.." && pwd)
t0=$(date +%s)
step() { echo "== $(( $(date +%s) - t0 )) s: $*"; }
rm -rf "$work" && git clone -q "$repo" "$work" && cd "$work"
step "make venv"; make venv > venv.log 2>&1
source .venv/bin/activate
step "template"; apcnn data template mydata
rm -rf mydata/images/* && cp "$photos"/images/* mydata/images/
cp "$photos"/labels.csv "$photos"/groups.yaml mydata/
step "verify"; apcnn data verify folder --root mydata | tail -5
step "train"; apcnn train -c configs/folder.yaml --set data.root=mydata --out runs/mydata 2>&1 | tail -25
step "evaluate"; apcnn evaluate --checkpoint runs/mydata/checkpoints/MG-CNN | tail -8
step "predict"; apcnn predict --checkpoint runs/mydata/checkpoints/MG-CNN "mydata/images/$(ls mydata/images | head -1)"
step "report"; apcnn report runs/mydata | tail -3
step "done"
