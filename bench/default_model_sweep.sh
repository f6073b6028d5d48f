#!/usr/bin/env bash
# Size and FIM rate of the default model, chosen by training the alternatives side by side
# with the same data, tokenizer, steps and batch, then scoring each exported int8 model on
# held-out files (docs/default-model.md, "How the size and FIM rate were chosen").
#
#   bench/default_model_sweep.sh RESULTS_DIR
#
# Environment: STEPS (10800), BATCH (8), MINUTES (cap per run), POSITIONS (500),
# PERPLEXITY (1; 0 skips it: the runs' validation loss compares them too, same tokenizer),
# PYTHON (python3), RUNS (runs/default), HELDOUT (runs/heldout/src). All variants train at
# once, so this wants a GPU (or many cores); every run stops and saves at MINUTES.
set -uo pipefail
RESULTS=${1:?usage: default_model_sweep.sh RESULTS_DIR}
STEPS=${STEPS:-10800}; BATCH=${BATCH:-8}; MINUTES=${MINUTES:-5}; POSITIONS=${POSITIONS:-500}; PERPLEXITY=${PERPLEXITY:-1}
PY=${PYTHON:-python3}; R=${RUNS:-runs/default}; H=${HELDOUT:-runs/heldout/src}
WORK=${WORK:-/tmp/sweep}
mkdir -p "$RESULTS" "$WORK"
export PYTHONUNBUFFERED=1 RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

echo '{"n_positions": 512}' > "$WORK/512.json"
# name  fim-rate  size  threads-when-scored (larger models get more); all with 512 positions
VARIANTS="tiny-fim50 0.5 tiny 2
tiny-fim0 0.0 tiny 2
tiny-fim90 0.9 tiny 2
mid-fim50 0.5 mid 4
mini-fim50 0.5 mini 6"

train() {  # name fim size
    $PY -m trainer.cli pretrain --corpus "$R/corpus-shuffled" --tokenizer "$R/tok16384" \
        --output "$WORK/$1" --overwrite --model-size "$3" --model-config "$WORK/512.json" \
        --seq-length 512 --batch-size "$BATCH" \
        --learning-rate 8e-4 --warmup-steps 100 --max-steps "$STEPS" --max-minutes "$MINUTES" \
        --eval-steps 2000 --save-steps 100000 --fim-rate "$2" --mixed-precision bf16 --seed 0 \
        --loss-chunk-size 0 --dataloader-workers 2 --num-threads 1 \
        > "$RESULTS/$1.train.log" 2>&1
}

score() {  # name threads: export int8, perplexity, line completion at random cursors and after the indentation
    local m="$WORK/$1/onnx" out="$RESULTS/$1"
    $PY -m trainer.cli export --checkpoint "$WORK/$1/final" --output "$m" --quantize int8 > "$out.export.txt" 2>&1 || return
    [ "$PERPLEXITY" = 1 ] && $PY -m trainer.cli evaluate --model "$m" --task perplexity --data "$H" --threads "$2" \
        --output "$out.ppl.json" > "$out.ppl.txt" 2>&1
    $PY -m trainer.cli evaluate --model "$m" --task line-completion --data "$H" --threads "$2" \
        --positions "$POSITIONS" --cursor random --fim both --fim-layout spm \
        --output "$out.lc_random.json" > "$out.lc_random.txt" 2>&1
    $PY -m trainer.cli evaluate --model "$m" --task line-completion --data "$H" --threads "$2" \
        --positions "$POSITIONS" --fim both --fim-layout spm \
        --output "$out.lc_indent.json" > "$out.lc_indent.txt" 2>&1
    cp "$WORK/$1/metrics.jsonl" "$out.metrics.jsonl"
}

start=$(date +%s)
while read -r name fim size _; do train "$name" "$fim" "$size" & done <<< "$VARIANTS"
wait
echo "trained in $(( $(date +%s) - start )) s"
for name in $(cut -d' ' -f1 <<< "$VARIANTS"); do
    grep -ho "step [0-9]*: eval loss.*\|done at step.*\|stopping at step.*" "$RESULTS/$name.train.log" | tail -3 | sed "s/^/$name: /"
done
while read -r name _ _ threads; do score "$name" "$threads" & done <<< "$VARIANTS"
wait
echo "scored in $(( $(date +%s) - start )) s"
for name in $(cut -d' ' -f1 <<< "$VARIANTS"); do
    echo "== $name"; grep -h "int8:" "$RESULTS/$name.export.txt"
    grep -hE "^(perplexity|bits_per_char|exact_match|edit_sim)" "$RESULTS/$name".{ppl,lc_random,lc_indent}.txt 2>/dev/null
done
