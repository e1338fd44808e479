#!/usr/bin/env bash
# Build the book's index plus the given chapters into a private output folder, with -W,
# so that one chapter can be checked without touching _toc.yml or the shared _build. The API reference
# pages (book/api/, generated from the docstrings) are always added, for the chapters' courselib links.
# Usage: tools/build_chapter.sh book/itq.md [book/other.md ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: $0 book/CHAPTER.md [...]" >&2; exit 2; }
name=$(basename "$1" .md)
out="/tmp/jb_${name}"
mkdir -p "$out"
toc="$out/_toc.yml"
{
  echo "format: jb-book"
  echo "root: book/index"
  echo "chapters:"
  for f in "$@"; do echo "  - file: ${f%.md}"; done
  # The pages the index links to (glossary terms, notation, running the labs), unless asked for already.
  for f in book/glossary.md book/notation.md book/labs.md; do
    case " $* " in *" $f "*) ;; *) echo "  - file: ${f%.md}";; esac
  done
  # The API reference pages (autodoc, no execution), so that {func}/{class}/{mod} roles resolve (nitpicky).
  for f in book/api/*.md; do
    case " $* " in *" $f "*) ;; *) [ "$f" = book/api/index.md ] || echo "  - file: ${f%.md}";; esac
  done
} > "$toc"
sed "s#cache: \"_build/.jupyter_cache\"#cache: \"$out/.jupyter_cache\"#" _config.yml > "$out/_config.yml"
export PATH="$PWD/.venv/bin:$PATH"
# one BLAS/OpenMP thread per kernel, as tools/build_book.py (make book) sets it
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
# the config copy lives in $out, so its local_extensions path (tools/) must come from PYTHONPATH
export PYTHONPATH="$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"
exec jupyter-book build . --toc "$toc" --config "$out/_config.yml" --path-output "$out" -W --keep-going
