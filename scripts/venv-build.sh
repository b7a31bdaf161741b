# Sourced by scripts/venv.sh and scripts/venv-airflow34.sh. `build_venv DIR CONSTRAINTS` makes DIR a
# venv holding objstore-backend[dev] (editable: this checkout) at the versions in CONSTRAINTS, and
# puts it first on PATH. It installs with uv (its version pinned in CONSTRAINTS, put into DIR by
# pip): on a fresh machine that takes ~15 s, where pip takes ~8 min for the 3.4 venv. A stamp of
# the inputs (pyproject.toml, CONSTRAINTS, this checkout's path) makes a repeat a no-op.
build_venv() {
  local dir=$1 constraints=$2 stamp
  stamp="$PWD $(cat pyproject.toml "$constraints" | sha256sum)"
  [ -x "$dir/bin/python" ] || "${PYTHON:-python3}" -m venv "$dir"
  if [ "$(cat "$dir/.objstore-backend-installed" 2>/dev/null)" != "$stamp" ]; then
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check -c "$constraints" uv
    "$dir/bin/uv" pip install --quiet --python "$dir/bin/python" -c "$constraints" -e '.[dev]'
    echo "$stamp" >"$dir/.objstore-backend-installed"
  fi
  export PATH="$PWD/$dir/bin:$PATH"
}
