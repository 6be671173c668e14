#!/bin/sh
# The package as a user installs it: build the wheel, install it into a fresh virtual
# environment (no dev extras, no source tree on the path), then `--version`, and train and score
# a tiny generated fleet with the installed command. Run by `make test` (so by CI).
#
#   sh tests/wheel_smoke.sh PYTHON DIR     (DIR is emptied first; torch as deploy/install-torch.sh)
set -eu
py=${1:?usage: wheel_smoke.sh PYTHON DIR}
dir=${2:?usage: wheel_smoke.sh PYTHON DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
case "$py" in /*) ;; */*) py="$(pwd)/$py" ;; esac
rm -rf "$dir"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
"$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dir/dist" "$root"
"$py" -m venv "$dir/venv"
sh "$root/deploy/install-torch.sh" "$dir/venv/bin/python" >/dev/null
"$dir/venv/bin/python" -m pip install -qq "$dir"/dist/stream_vae-*.whl
cd "$dir"  # not the repository: only the installed package can be imported
sv="$dir/venv/bin/stream-vae"
version=$("$sv" --version)
want=$("$py" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$root/pyproject.toml")
[ "$version" = "stream-vae $want" ] || { echo "wheel smoke: --version said '$version', want $want" >&2; exit 1; }
printf '[window]\nsize = 16\n[model]\nhidden = 8\nlatent = 2\n[train]\nepochs = 2\n' > tiny.toml
"$sv" generate --out fleet --series 3 --features 2 --steps 300 >/dev/null
"$sv" train --config tiny.toml --data fleet/train.csv --out model --no-progress >/dev/null
"$sv" score --model model --data fleet/test.csv --out scores.csv >/dev/null
rows=$(($(wc -l < scores.csv) - 1))
# 3 series x 120 test rows, each series' first 15 complete no window
[ "$rows" -eq $((3 * (120 - 15))) ] || { echo "wheel smoke: $rows scored rows, want 315" >&2; exit 1; }
"$dir/venv/bin/python" -c 'import stream_vae, sys; assert "/site-packages/" in stream_vae.__file__, stream_vae.__file__'
echo "wheel smoke: $version installed from $(basename "$dir"/dist/*.whl), trained and scored $rows windows"
