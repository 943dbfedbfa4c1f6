#![no_std]
// This file exists so that `director-ebpf` can be a build-dependency of
// `director` (cargo then rebuilds the daemon when the eBPF code changes).
