//! Passivated tenant trees give their memory back to the OS. A binary of its own:
//! resident memory is per process, and the integration tests running beside it
//! in `it` would blur the figures. It allocates with jemalloc, as `canopy` does
//! (the global allocator comes with `canopy_node`); `actors/tests/memory.rs`
//! covers the release on glibc's allocator.

#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::time::Duration;

use actors::domain::tenant::{Scope, TenantId};
use actors::memory::{DELAY, release_now, resident_bytes};
use actors::tree::deps::Deps;
use actors::tree::{NodeArgs, NodeSupervisor, TenantArgs, TenantSupervisor};
use canopy_node::nats::local::LocalNats;
use ractor::Actor;

const TREES: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_of_stopped_trees_leaves_the_process() {
    let nats = LocalNats::start().expect("nats-server");
    let nc = nats.client().await.expect("connect");
    let (store, keys) = actors::store::event_store::EventStore::open(nc, 1).await.expect("stream");
    let deps = Deps {
        store,
        keys: actors::store::seal::KeyRing::new(keys, actors::store::seal::MasterKey::generate()),
        hasher: actors::hasher::Hasher::new(1, actors::hasher::owasp_params()),
        snapshot_every: 100,
        cache_per_tenant: 1000,
        accounts: Default::default(),
        modules: std::sync::Arc::new(actors::domain::manifest::Registry::empty()),
    };
    let idle = Duration::from_secs(3600);
    let (node, node_handle) = Actor::spawn(
        None,
        NodeSupervisor,
        NodeArgs { deps: deps.clone(), idle_timeout: idle, children: actors::tree::CHILDREN },
    )
    .await
    .expect("node");

    release_now();
    let before = resident_bytes();
    let mut trees = Vec::with_capacity(TREES);
    for t in 0..TREES {
        let scope = Scope::Tenant(TenantId::parse(&format!("mem-{t}")).expect("slug"));
        let args = TenantArgs { scope, deps: deps.clone(), idle_timeout: idle, children: actors::tree::CHILDREN };
        trees.push(Actor::spawn_linked(None, TenantSupervisor, args, node.get_cell()).await.expect("tree"));
    }
    let live = resident_bytes().saturating_sub(before);
    assert!(live > 16 * 1024 * 1024, "{TREES} trees should take some memory, took {} KiB", live / 1024);

    for (tree, _) in &trees {
        tree.stop(Some("passivate".into()));
    }
    for (_, handle) in trees {
        handle.await.expect("tree stopped");
    }
    // Nothing runs now but the NodeSupervisor's release, due `DELAY` after the first stop.
    tokio::time::sleep(DELAY + Duration::from_millis(1500)).await;
    let left = resident_bytes().saturating_sub(before);
    assert!(left < live / 2, "passivation kept {} of the trees' {} KiB resident", left / 1024, live / 1024);
    node.stop(None);
    node_handle.await.expect("node stopped");
}
