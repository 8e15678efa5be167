"""The Firecracker backend, by job: `backend` (the VmmBackend), `api` (its HTTP API client),
`layout` (the VM's files as Firecracker names them), `jail` (the jailer's chroot and ids),
`snapshot` (warm start), `locate` (finding the binary) and `install` (fetching a release)."""
