//! The machine and software a run used.

use std::collections::BTreeMap;

use sysinfo::System;

use crate::metrics::model::Environment;

/// Reads the CPU, memory and OS of this machine; `brokers` maps broker names to versions.
pub fn collect_environment(brokers: BTreeMap<String, String>) -> Environment {
    let (cpu_model, cores, memory_bytes) = match System::new() {
        Ok(mut system) => {
            system.refresh_cpu_all();
            system.refresh_memory();
            let model = system
                .cpus()
                .first()
                .map(|cpu| cpu.brand().trim().to_owned())
                .filter(|brand| !brand.is_empty())
                .unwrap_or_else(|| "unknown".into());
            (model, system.cpus().len().max(1), system.total_memory())
        }
        Err(_) => (
            "unknown".into(),
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            0,
        ),
    };
    Environment {
        cpu_model,
        cores,
        memory_bytes,
        os: System::long_os_version().unwrap_or_else(|_| std::env::consts::OS.into()),
        kernel: System::kernel_version().unwrap_or_else(|_| "unknown".into()),
        busbench_version: env!("CARGO_PKG_VERSION").into(),
        git_commit: crate::build_commit(),
        brokers,
        broker_addresses: BTreeMap::new(),
    }
}
