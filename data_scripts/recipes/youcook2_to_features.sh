#!/usr/bin/env bash
# The worked path of notebook 10_efficiency_and_scale, steps 1-3: YouCook2 videos and HowTo100M narration
# in TinyCook's layout, then clip features, rank-sharded over NPROC processes (GPUs, or CPU processes).
#
#   NPROC=4 LIMIT=50 bash data_scripts/recipes/youcook2_to_features.sh
#
# Steps 1-2 need the internet (and yt-dlp for the videos); step 3 runs offline. Every step resumes where
# it stopped: downloads are recorded in manifest.json, finished videos are skipped by the extractor.
# Read data_scripts/cards/youcook2.md and howto100m.md first: the videos belong to their uploaders.
set -euo pipefail
cd "$(dirname "$0")/../.."

ROOT=${ROOT:-data/youcook2}            # raw downloads
READY=${READY:-data/youcook2-ready}    # annotations.json + videos/ (links), TinyCook's layout
HOWTO=${HOWTO:-data/howto100m}
SUBSET=${SUBSET:-validation}           # YouCook2 subset to fetch: training or validation
LIMIT=${LIMIT:-50}                     # at most this many videos
NPROC=${NPROC:-1}                      # processes for feature extraction
EXTRACTOR=${EXTRACTOR:-s3d}            # s3d: the paper's (Kinetics-400 weights, 32 MB, fetched once)
PYTHON=${PYTHON:-python}

# 1. YouCook2: annotations, the videos still online, then the TinyCook-layout folder (a prepared corpus:
#    corpus.json names the extractor; its step sentences stand in for narration in captions.json)
$PYTHON data_scripts/youcook2.py annotations --root "$ROOT"
$PYTHON data_scripts/youcook2.py videos --root "$ROOT" --subset "$SUBSET" --limit "$LIMIT"
$PYTHON data_scripts/youcook2.py prepare --root "$ROOT" --out "$READY"

# 2. (optional) HowTo100M's ASR captions of cooking tasks, in the same layout, for HowTo100M's own videos
if [ -n "${WITH_HOWTO100M:-}" ]; then
  $PYTHON data_scripts/howto100m.py metadata --root "$HOWTO"
  $PYTHON data_scripts/howto100m.py subset --root "$HOWTO" --category "Food and Entertaining" --limit "$LIMIT" \
      --out "$HOWTO-cooking"
fi

# 3. clip features (and per-clip audio features), rank r of NPROC taking every NPROC-th video
$PYTHON -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m vbert_lab extract \
    --videos "$READY/videos" --out "$READY/derived/features" --extractor "$EXTRACTOR" --audio

echo "features in $READY/derived/features; $READY is a prepared corpus (corpus.json): next, visual words, token"
echo "files and pretraining on it, e.g. vbert-lab pretrain --config FILE with \"data_dir\": \"$READY\" (notebook 10, section 8)"
