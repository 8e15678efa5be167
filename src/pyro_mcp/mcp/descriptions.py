"""What each MCP tool tells the model: when to use it, what it returns, its limits."""

from __future__ import annotations

ENV_HINT = (
    "Environment name: debian:12 (git, python3), debian:12-base, debian:12-build (gcc, make)."
)

VM_RUN = (
    "Run one command in a fresh, disposable Linux microVM and delete the VM afterwards. Use it "
    "for any command that must not run on the user's machine. `command` is a shell string "
    "(run with sh -lc) or an argv list. Returns stdout, stderr, exit_code (124 on timeout, "
    "with the output so far) and duration_ms; each stream is capped at 1 MiB. network=true "
    "gives the VM egress to public addresses only (never the host, LAN or cloud metadata). "
    + ENV_HINT
)
WORKSPACE_CREATE = (
    "Create a persistent workspace: a VM whose /workspace keeps its files between calls until "
    "deleted or its ttl_seconds (60-3600, default 600) runs out. seed_path (a host directory or "
    ".tar/.tar.gz/.tgz inside the server's allowed roots) fills /workspace and becomes the "
    "baseline that workspace_diff and workspace_reset compare against. Returns workspace_id. "
    "network_policy (full profile) 'egress' reaches public addresses only; allow_hosts "
    "(domains, *.domain, IPv4 CIDRs) narrows egress to those. secrets (full profile) "
    '[{"name", "value"} or {"name", "file_path"}] are kept for the guest only: map them into '
    "a command with secret_env; every output shows [REDACTED] in their place. " + ENV_HINT
)
WORKSPACE_EXEC = (
    "Run a command in a workspace, in /workspace; files and installed packages persist for "
    "later calls. `command` is a shell string (sh -lc) or an argv list. Returns stdout, "
    "stderr, exit_code (124 on timeout) and its sequence number in the workspace's history. "
    "secret_env (full profile) {SECRET: ENV} puts workspace secrets in its environment."
)

DESCRIPTIONS = {
    "vm_run": VM_RUN,
    "vm_list_environments": (
        "List the environments (Debian 12 variants) and whether each is built on this host."
    ),
    "vm_create": (
        "Record a new VM without starting it. Prefer vm_run for one command; use this only "
        "when you must inspect the VM before its single command. Returns vm_id."
    ),
    "vm_start": ("Boot a VM made by vm_create and wait until it answers."),
    "vm_exec": (
        "Run ONE command in a started VM; the VM is deleted afterwards. Returns stdout, "
        "stderr, exit_code."
    ),
    "vm_stop": ("Stop a VM (its record stays, as `stopped`)."),
    "vm_delete": ("Stop a VM if needed and remove every trace of it."),
    "vm_status": ("A VM's state (created, started or stopped, with the reason) and settings."),
    "vm_network_info": (
        "A VM's network: guest_ip, gateway_ip, subnet_cidr, mac_address, dns_servers and "
        "allow_hosts, or why it has none."
    ),
    "vm_reap_expired": (
        "Delete every VM past its TTL (their supervisors also end them on time); returns the "
        "deleted ids."
    ),
    "workspace_create": WORKSPACE_CREATE,
    "workspace_list": (
        "List workspaces, most recently active first, with state, labels and expires_at."
    ),
    "workspace_update": (
        "Set or clear a workspace's name; add, change or remove labels (clear_labels lists keys); "
        "in the full profile, replace the egress allowlist (allow_hosts) or lift it "
        "(clear_allow_hosts), effective at once."
    ),
    "workspace_status": (
        "A workspace's record: state (a workspace whose VM died shows `stopped` with the "
        "reason), expires_at, command_count, last_command, reset_count."
    ),
    "workspace_logs": (
        "Every command run in the workspace, oldest first: sequence, command, exit_code, "
        "duration_ms and the last 64 KiB of stdout and stderr."
    ),
    "workspace_diff": (
        "What changed in /workspace since it was created (its baseline): a summary (added, "
        "modified, deleted, type_changed) and a unified patch per changed text file."
    ),
    "workspace_delete": ("Delete a workspace: its VM, disk and command logs. Cannot be undone."),
    "workspace_stop": (
        "Stop a workspace's VM: its memory, disk and files are kept and it uses no CPU or RAM "
        "until workspace_start, which resumes every shell, service and process where it was."
    ),
    "workspace_start": (
        "Resume a stopped workspace where it stopped (workspace_start.resumed true), or boot it "
        "on its own disk when its memory could not be kept (the note says why)."
    ),
    "snapshot_create": (
        "Snapshot a started workspace's whole disk (packages installed outside /workspace "
        "too) under snapshot_name; quick whatever the workspace holds. workspace_reset with "
        "snapshot=snapshot_name goes back to it."
    ),
    "snapshot_list": (
        "List a workspace's snapshots: the baseline first, then named ones, newest first."
    ),
    "snapshot_delete": "Delete a named snapshot (the baseline cannot be deleted).",
    "workspace_disk_export": (
        "Write a stopped workspace's whole root (as its guest saw it) as one ext4 image to a "
        "new host path inside the server's allowed roots."
    ),
    "workspace_disk_list": (
        "List a stopped workspace's /workspace from its disk (workspace_file_list needs it "
        "started). Symlinks are listed, never followed."
    ),
    "workspace_disk_read": (
        "Read a file of a stopped workspace's /workspace from its disk (at most max_bytes)."
    ),
    "workspace_exec": WORKSPACE_EXEC,
    "workspace_sync_push": (
        "Copy a host directory or .tar/.tar.gz/.tgz (inside the server's allowed roots) into "
        "/workspace or a directory inside it. Adds and replaces files; never deletes any."
    ),
    "workspace_export": (
        "Copy one file or directory of /workspace to a new host path (inside the server's "
        "allowed roots; it must not exist yet)."
    ),
    "workspace_file_list": (
        "List a directory of /workspace (recursive for everything below it): path, "
        "artifact_type, size_bytes, link_target."
    ),
    "workspace_file_read": (
        "Read a text file of /workspace: the first max_bytes (default 65536, at most "
        "1048576); `truncated` says the file is longer."
    ),
    "workspace_file_write": (
        "Create or replace a text file in /workspace (at most 1 MiB; parent directories are "
        "made). Replaces the whole file."
    ),
    "workspace_patch_apply": (
        "Apply a unified diff (as `git diff` writes it: new, deleted and renamed files too) "
        "to /workspace. Paths are relative to /workspace. Every hunk is checked first; a "
        "patch that does not apply changes nothing."
    ),
    "workspace_reset": (
        "Put the workspace back in a fresh VM: to its baseline (snapshot='baseline', the default: "
        "packages installed outside /workspace are gone too), or to a named snapshot's whole "
        "disk. Command history is kept."
    ),
    "shell_open": (
        "Open an interactive shell (bash on a PTY) in a started workspace, for programs that "
        "need a terminal: a REPL, a debugger, `git rebase -i`, a TUI. It lives in the guest "
        "until shell_close or a reset (a workspace_stop only pauses it). Returns shell_id. "
        "secret_env {SECRET: ENV} puts workspace secrets in its environment."
    ),
    "shell_read": (
        "Read a shell's output from `cursor` (0 at first, then the next_cursor you got). "
        "wait_for_idle_ms (1-10000) first waits until the output has been quiet that long: use "
        "it after shell_write to get a command's whole reply in one call. plain=true renders "
        "colours, cursor moves and redraws as the screen shows them. truncated=true: output "
        "before `cursor` was dropped (each shell keeps its last 1 M characters)."
    ),
    "shell_write": (
        "Type `input` into a shell, then Enter unless append_newline=false. To interrupt a "
        "running command use shell_signal rather than typing Ctrl-C."
    ),
    "shell_signal": (
        "Send HUP, INT, TERM or KILL to the shell's foreground job, as a terminal would: INT "
        "interrupts a running command and leaves the shell."
    ),
    "shell_resize": "Change a shell's window size in columns and rows (programs see SIGWINCH).",
    "shell_close": "End a shell and every process it started.",
    "service_start": (
        "Start a long-running process in a started workspace (a dev server, a database) under "
        "service_name; returns once ready: give at most one of ready_file (a path in "
        "/workspace), ready_tcp (HOST:PORT in the guest), ready_http (a URL answering 2xx/3xx) "
        "or ready_command (exits 0), within ready_timeout_seconds. state is running, or failed "
        "with stop_reason (process_exited_before_ready, readiness_timeout). published_ports "
        "[{guest_port, host_port?}] relays 127.0.0.1 on the host to the guest while it runs "
        "(network_policy 'egress+published-ports' only). secret_env {SECRET: ENV} puts "
        "workspace secrets in its environment."
    ),
    "service_list": "A workspace's services, running or ended, with their states.",
    "service_status": (
        "A service's state: running, exited (with exit_code), stopped or failed (stop_reason)."
    ),
    "service_logs": (
        "A service's stdout and stderr: the last tail_lines lines (default 200) or all=true."
    ),
    "service_stop": "Stop a service: TERM to its processes, KILL after a grace; its ports close.",
}
