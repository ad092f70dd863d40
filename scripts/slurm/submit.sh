#!/usr/bin/env bash
# Submit the participant array and the group job that runs when every task succeeded.
#   BIDS_DIR=/data/ds OUTPUT_DIR=/scratch/out SIF=bids_spheres.sif bash scripts/slurm/submit.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
n=$(bash "$here/bids_spheres_array.sbatch" --count)
if [[ "$n" -lt 1 ]]; then
    echo "submit.sh: no participants listed in ${LABELS_FILE:-$BIDS_DIR/participants.tsv}" >&2
    exit 66
fi
array=$(sbatch --parsable --export=ALL --array=1-"$n" "$here/bids_spheres_array.sbatch")
group=$(sbatch --parsable --export=ALL --dependency=afterok:"${array%%;*}" "$here/group.sbatch")
echo "participant array job $array ($n tasks); group job $group after it"
