#!/usr/bin/env bash
# Submit the participant array job and the group job that starts when every task has ended
# (afterany) and checks their outcome itself (group.sbatch).
#
#   export BIDS_DIR=/data/ds OUTPUT_DIR=/scratch/out SIF=/images/bids_spheres.sif
#   bash scripts/slurm/submit.sh --seeds "/data/my seeds.tsv" --denoise-strategy scrubbing
#
# The arguments are bids_spheres options, given to both jobs as they are (an array: a path
# with spaces stays one argument). Participants: LABELS_FILE, else BIDS_DIR/participants.tsv,
# else the sub-* folders of BIDS_DIR. SIF: apptainer build bids_spheres.sif apptainer.def.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
: "${BIDS_DIR:?set BIDS_DIR to the input dataset}"
: "${OUTPUT_DIR:?set OUTPUT_DIR to the output directory}"
: "${SIF:?set SIF to the bids_spheres Apptainer image}"
if [[ ! -f "$SIF" ]]; then
    echo "submit.sh: no image $SIF; build it: apptainer build $SIF apptainer.def" >&2
    exit 66
fi
# shellcheck source=scripts/slurm/bids_spheres_array.sbatch
source "$here/bids_spheres_array.sbatch"
if [[ -n "${BIDS_SPHERES_ARGS:-}" ]]; then
    echo "submit.sh: BIDS_SPHERES_ARGS is no longer read: pass the bids_spheres options as" \
        "arguments (submit.sh --seeds ...), so that paths with spaces work" >&2
    exit 64
fi
file=$(labels_file)
n=$(count_labels "$file") || exit
if [[ "$n" -lt 1 ]]; then
    echo "submit.sh: no participants found in $(labels_source); set LABELS_FILE to a file" \
        "with one label per line" >&2
    exit 66
fi
array=$(sbatch --parsable --export=ALL --array=1-"$n" "$here/bids_spheres_array.sbatch" "$@")
array=${array%%;*}
group=$(sbatch --parsable --export=ALL,ARRAY_JOB_ID="$array",N_TASKS="$n" \
    --dependency=afterany:"$array" "$here/group.sbatch" "$@")
echo "participant array job $array ($n tasks, from $(labels_source)); group job ${group%%;*} after it"
