#!/usr/bin/env bash
# Train the shipped default model on phantoms and write services/inference/src/tumorseg/shipped_model (what `make train-demo` runs).
#
#   1. N training phantoms of run seed TRAIN_SEED (generated once, reused when present)
#   2. tumorseg train with training/recipes/phantom_default.json (resumes an interrupted run)
#   3. held-out phantoms of OTHER run seeds, tumorseg evaluate on their original lattices (and, for a
#      recipe with optional inputs, once more with each optional sequence missing: --without SEQ)
#   4. MODEL_CARD.md from the manifest and the evaluations; the package copied to DEST
#
# ~60 min on 2 CPU cores; the same script runs unchanged on a CUDA machine (device auto).
# Everything can be overridden from the environment, e.g. TRAIN_CASES=8 EPOCHS=1 for a quick look.
# The shipped package's fallback network (for studies without FLAIR, T1 or T2): fine-tuned from the main
# network with one optional sequence missing in every sample, then packaged with it (FALLBACK_FOR), so a
# complete study is segmented exactly as by the main network alone:
#   RECIPE=training/recipes/phantom_fallback.json RUN=$WORK/model-fallback FALLBACK_FOR=services/inference/src/tumorseg/shipped_model \
#       DEST=$WORK/candidate bash scripts/train_demo.sh
# (a missing T1's channel holds T1ce, the recipe's inputs.substitutes; the fallback's studies are
# bias-corrected by N4 first, FALLBACK_BIAS; FLAIR stays required, FALLBACK_REQUIRE: without it the
# clinical-head Dice fell by more than 0.05, see docs/missing-sequences.md.)
set -euo pipefail
trap 'echo "train_demo.sh: failed (line $LINENO, exit $?); run it again to resume" >&2' ERR
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
WORK=${WORK:-out/train-demo}
RECIPE=${RECIPE:-training/recipes/phantom_default.json}
TRAIN_CASES=${TRAIN_CASES:-96}
TRAIN_SEED=${TRAIN_SEED:-1}
HELDOUT_SEEDS=${HELDOUT_SEEDS:-"2 3 4 5 6 7"}
HELDOUT_PER_SEED=${HELDOUT_PER_SEED:-4}
DEVICE=${DEVICE:-auto}
DEST=${DEST:-services/inference/src/tumorseg/shipped_model}
RUN=${RUN:-$WORK/model}  # the run's package, checkpoint and evaluation reports
FALLBACK_FOR=${FALLBACK_FOR:-}  # a package needing all four: the run becomes its fallback network
FALLBACK_SERVES=${FALLBACK_SERVES:-}  # e.g. "flair t2": the fallback serves only those (see fallback.py)
FALLBACK_BIAS=${FALLBACK_BIAS:-n4}  # the fallback's studies bias-corrected first (none: not)
FALLBACK_REQUIRE=${FALLBACK_REQUIRE:-flair}  # sequences the package requires though the fallback was trained without
PACKAGE=$RUN  # what is evaluated and shipped
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
EXTRA_TRAIN_ARGS=()
[[ -n "${EPOCHS:-}" ]] && EXTRA_TRAIN_ARGS+=(--epochs "$EPOCHS")
[[ -n "${MAX_STEPS:-}" ]] && EXTRA_TRAIN_ARGS+=(--max-steps "$MAX_STEPS")
# tumorseg_training lives in training/; harmless once the project installs it.
export PYTHONPATH="$PWD/training${PYTHONPATH:+:$PYTHONPATH}"

# phantoms OUT SEED CASES START: cases START..START+CASES-1 of run SEED, in JOBS parallel ranges.
phantoms() {
    local out=$1 seed=$2 cases=$3 start=$4 jobs=$JOBS pids=() first count
    mkdir -p "$out"
    ((jobs > cases)) && jobs=$cases
    for ((j = 0; j < jobs; j++)); do
        first=$((start + j * cases / jobs))
        count=$((start + (j + 1) * cases / jobs - first))
        (
            # One process per range (the brain templates load once), from its first missing case on.
            for ((i = first; i < first + count; i++)); do
                id=$(printf "BraTS2021_%05d" "$i")
                if [[ ! -f "$out/$id/${id}_seg.nii.gz" ]]; then
                    "$BIN/tumorseg" phantom --out "$out" --cases $((first + count - i)) --seed "$seed" --start-index "$i" >/dev/null
                    break
                fi
            done
        ) &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do
        wait "$pid" || { echo "phantom generation into $out failed" >&2; return 1; }
    done
}

stage() { echo "== $(date +%H:%M:%S) $*"; }
t0=$SECONDS

stage "training phantoms: $TRAIN_CASES of run seed $TRAIN_SEED -> $WORK/phantoms/train ($JOBS jobs)"
phantoms "$WORK/phantoms/train" "$TRAIN_SEED" "$TRAIN_CASES" 0
t_gen=$((SECONDS - t0))

stage "training ($RECIPE, device $DEVICE)"
"$BIN/tumorseg" train --data "$WORK/phantoms/train" --out "$RUN" --cache "$WORK/cache" \
    --config "$RECIPE" --device "$DEVICE" --resume "${EXTRA_TRAIN_ARGS[@]}"
t_train=$((SECONDS - t0 - t_gen))

if [[ -n "$FALLBACK_FOR" ]]; then
    PACKAGE=${RUN%/}-package
    stage "package: $FALLBACK_FOR with $RUN as its fallback network -> $PACKAGE"
    rm -rf "$PACKAGE"
    fallback_args=()
    for seq in $FALLBACK_SERVES; do fallback_args+=(--serves "$seq"); done
    for seq in $FALLBACK_REQUIRE; do fallback_args+=(--require "$seq"); done
    "$BIN/python" -m tumorseg_training.fallback --main "$FALLBACK_FOR" --fallback "$RUN" --out "$PACKAGE" \
        "${fallback_args[@]}" --bias-correction "$FALLBACK_BIAS"
fi

stage "held-out phantoms: run seeds $HELDOUT_SEEDS, $HELDOUT_PER_SEED each -> $WORK/phantoms/heldout"
rm -rf "$WORK/phantoms/heldout"
index=0
for seed in $HELDOUT_SEEDS; do
    # Distinct case ids per seed (one folder); case k of seed S is generate_case(S * 100000 + k).
    phantoms "$WORK/phantoms/heldout" "$seed" "$HELDOUT_PER_SEED" "$index"
    index=$((index + HELDOUT_PER_SEED))
done

stage "evaluating on the held-out phantoms (original lattices)"
description="$index phantoms of run seeds ${HELDOUT_SEEDS// /, } ($HELDOUT_PER_SEED consecutive cases each), none used in training (run seed $TRAIN_SEED)"
"$BIN/tumorseg" evaluate --model "$PACKAGE" --data "$WORK/phantoms/heldout" --device "$DEVICE" \
    --json "$WORK/heldout.json" --record heldout --description "$description"
# The sequences the package may do without (none for a model that requires all four).
optional=$("$BIN/python" -c 'import json, sys; print(*json.load(open(sys.argv[1])).get("inputs", {}).get("optional", []))' "$PACKAGE/model.json")
without_reports=()
for seq in $optional; do
    stage "evaluating without $seq"
    "$BIN/tumorseg" evaluate --model "$PACKAGE" --data "$WORK/phantoms/heldout" --device "$DEVICE" --without "$seq" \
        --json "$WORK/heldout_without_$seq.json" --record "heldout_without_$seq" --description "$description; $seq missing"
    without_reports+=("$seq=$WORK/heldout_without_$seq.json")
done
t_eval=$((SECONDS - t0 - t_gen - t_train))

stage "model card and package -> $DEST"
"$BIN/python" -m tumorseg_training.card --model "$PACKAGE" --evaluation "$WORK/heldout.json" \
    --without "${without_reports[@]}" --timing "phantoms=$t_gen" "training=$t_train" "held-out=$t_eval" "total=$((SECONDS - t0))"
mkdir -p "$DEST"
rm -f "$DEST"/fallback* "$DEST"/norms.pt  # a package without a fallback (or norms) must not keep an older one's
for f in model.json model.pt MODEL_CARD.md metrics.csv curves.png; do
    cp "$PACKAGE/$f" "$DEST/$f"
done
for f in norms.pt fallback.pt fallback_norms.pt fallback_metrics.csv fallback_curves.png; do
    if [[ -f "$PACKAGE/$f" ]]; then cp "$PACKAGE/$f" "$DEST/$f"; fi
done
du -sh "$DEST"
stage "done in $(((SECONDS - t0) / 60)) min: $DEST"
