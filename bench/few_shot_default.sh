#!/usr/bin/env bash
# The few-shot experiment on Fashion-MNIST (docs/scenarios/few_shot.md): base classes 0-5 for
# the classifier and meta stages, 4-way episodes of the novel classes 6-9 for evaluation.
# Finished runs (those with a result.json) are skipped; the evaluations always run (about 10 s each).
# Usage: bench/few_shot_default.sh        (from anywhere; W2S overrides the command, e.g. W2S=w2s)
set -euo pipefail
cd "$(dirname "$0")/.."
W2S=${W2S:-".venv/bin/python cli.py"}
C=configs/few_shot
R=runs/few_shot

step() {  # step RUN_DIR w2s-arguments...: run unless RUN_DIR already holds a finished run
  local out=$1; shift
  if [ -f "$out/result.json" ]; then echo "skip $out (finished)"; else $W2S "$@"; fi
}

# classifier stage on the base classes (the ordinary pipeline with data.classes)
step $R/fmnist_teacher_mlp train-teacher $C/fmnist_teacher_mlp.yaml
step $R/fmnist_ceiling_cnn train-teacher $C/fmnist_ceiling_cnn.yaml
$W2S infer-teacher $C/fmnist_student_adaptconf.yaml   # leaves a complete store as it is
step $R/fmnist_student_adaptconf train-student $C/fmnist_student_adaptconf.yaml
# meta stage (Meta-Baseline) on episodes of the base classes
step $R/fmnist_meta_ceiling few-shot meta $C/fmnist_meta_ceiling.yaml
step $R/fmnist_meta_adaptconf few-shot meta $C/fmnist_meta_adaptconf.yaml
step $R/fmnist_meta_adaptconf_gt few-shot meta $C/fmnist_meta_adaptconf.yaml \
  --set meta.gt_weight=1 --set run.output=$R/fmnist_meta_adaptconf_gt
# 4-way 1-shot and 5-shot on the novel classes, 2,000 episodes each, seed 0
RUNS="teacher_mlp ceiling_cnn student_adaptconf meta_ceiling meta_adaptconf meta_adaptconf_gt"
for run in $RUNS; do
  $W2S few-shot eval $C/fmnist_eval.yaml --set encoder.checkpoint=$R/fmnist_$run --set run.output=$R/eval_$run >/dev/null
done

.venv/bin/python - $R $RUNS <<'PY'
import json, sys
root, runs = sys.argv[1], sys.argv[2:]
print("| encoder | 4-way 1-shot (%) | 4-way 5-shot (%) |\n|---|---:|---:|")
for run in runs:
    s = json.load(open(f"{root}/eval_{run}/result.json"))["shots"]
    cell = lambda k: f"{100 * s[k]['mean']:.2f} +- {100 * s[k]['ci95']:.2f}"
    print(f"| {run} | {cell('1')} | {cell('5')} |")
PY
