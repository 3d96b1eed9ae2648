#!/bin/bash
# Submits the stages of this megadepth prep run as Slurm job arrays, each after the previous one
# succeeded; a stage that fails or is cancelled cancels the ones after it (--kill-on-invalid-dep), which
# would otherwise wait forever. Rerunning it after a failure resumes: finished units are skipped.
set -euo pipefail
cd "$(dirname "$0")"
dep=""
{{submissions}}echo {{done_message}}
