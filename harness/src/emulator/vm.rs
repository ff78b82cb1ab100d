//! Wasmtime plumbing: the engine, the compiled module, the current instance
//! and guest calls (guest memory access is in `guest_mem.rs`).
//!
//! The host keeps one instance at a time. When a guest call traps the
//! instance is marked dead; the next time a context is needed a fresh store
//! and instance are created and the host data ([`HostCtx`]) moves into the
//! new store, as ngx_wasm_module replaces a trapped instance.

use super::abi;
use super::api::LogLevel;
use super::state::{Cur, HostCtx};
use super::wasi;
use anyhow::{anyhow, bail, Context as _};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use wasmtime::{Config, Engine, Func, Instance, Linker, Memory, Module, Store, Val};

/// Guest exports the host calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Export {
    Malloc,
    OnContextCreate,
    OnVmStart,
    OnConfigure,
    OnRequestHeaders,
    OnRequestBody,
    OnResponseHeaders,
    OnResponseBody,
    OnLog,
    OnDone,
    OnDelete,
    OnHttpCallResponse,
    OnTick,
}

const EXPORTS: [(Export, &str); 13] = [
    (Export::Malloc, "malloc"),
    (Export::OnContextCreate, "proxy_on_context_create"),
    (Export::OnVmStart, "proxy_on_vm_start"),
    (Export::OnConfigure, "proxy_on_configure"),
    (Export::OnRequestHeaders, "proxy_on_request_headers"),
    (Export::OnRequestBody, "proxy_on_request_body"),
    (Export::OnResponseHeaders, "proxy_on_response_headers"),
    (Export::OnResponseBody, "proxy_on_response_body"),
    (Export::OnLog, "proxy_on_log"),
    (Export::OnDone, "proxy_on_done"),
    (Export::OnDelete, "proxy_on_delete"),
    (Export::OnHttpCallResponse, "proxy_on_http_call_response"),
    (Export::OnTick, "proxy_on_tick"),
];

fn export_name(export: Export) -> &'static str {
    EXPORTS
        .iter()
        .find(|(e, _)| *e == export)
        .map_or("?", |(_, name)| name)
}

/// The result of a guest call.
#[derive(Debug)]
pub(crate) enum Guest {
    /// Returned normally (with its i32 result, if any).
    Ok(Option<i32>),
    /// Trapped; the instance is now dead.
    Trap(String),
    /// The instance is dead or the export is missing: nothing was called.
    NotCalled,
}

/// A live instance and its exports.
struct Live {
    instance: Instance,
    funcs: Vec<(Export, Func)>,
}

/// Increments the engine epoch so runaway guest calls are interrupted. One
/// ticker per engine, shared by the emulators using it; the thread stops
/// when the last of them is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: &Engine) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let engine = engine.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("emu-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Compiled modules, kept for the life of the process so that every
/// emulator of a test run does not compile the same file again.
struct Compiled {
    engine: Engine,
    module: Module,
    ticker: Weak<Ticker>,
}

type CacheKey = (PathBuf, u64, Option<SystemTime>);

fn cache() -> &'static Mutex<HashMap<CacheKey, Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<CacheKey, Compiled>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The engine and module for `wasm` (compiled once per file version) and
/// the engine's epoch ticker.
fn load(wasm: &Path) -> anyhow::Result<(Engine, Module, Arc<Ticker>)> {
    let meta = std::fs::metadata(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let key: CacheKey = (wasm.to_path_buf(), meta.len(), meta.modified().ok());
    let mut cache = cache()
        .lock()
        .map_err(|_| anyhow!("module cache lock poisoned"))?;
    if let Some(c) = cache.get_mut(&key) {
        let ticker = match c.ticker.upgrade() {
            Some(t) => t,
            None => {
                let t = Arc::new(Ticker::start(&c.engine)?);
                c.ticker = Arc::downgrade(&t);
                t
            }
        };
        return Ok((c.engine.clone(), c.module.clone(), ticker));
    }
    let bytes = std::fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let mut config = Config::new();
    config.epoch_interruption(true);
    // `EMULATOR_PERFMAP=1`: write /tmp/perf-<pid>.map so that `perf report`
    // names the module's functions (docs/performance.md, profiling).
    if std::env::var_os("EMULATOR_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, &bytes).context("compiling the module")?;
    let ticker = Arc::new(Ticker::start(&engine)?);
    cache.insert(
        key,
        Compiled {
            engine: engine.clone(),
            module: module.clone(),
            ticker: Arc::downgrade(&ticker),
        },
    );
    Ok((engine, module, ticker))
}

/// A store whose call hook times host functions.
fn new_store(engine: &Engine, ctx: HostCtx) -> Store<HostCtx> {
    let mut store = Store::new(engine, ctx);
    store.call_hook(|mut ctx, hook| {
        ctx.data_mut().on_call_hook(hook);
        Ok(())
    });
    store
}

const EPOCH_TICK: Duration = Duration::from_millis(10);

pub(crate) struct Vm {
    engine: Engine,
    module: Module,
    linker: Linker<HostCtx>,
    store: Store<HostCtx>,
    live: Option<Live>,
    /// The name of the start function (`_start` or `_initialize`), if any.
    start: Option<String>,
    deadline_ticks: u64,
    _ticker: Arc<Ticker>,
}

impl Vm {
    /// Compiles `wasm`, links the host functions and creates the first
    /// instance. Fails as module loading fails in Kong: unknown ABI, missing
    /// required exports, or an import the host does not provide.
    pub fn new(wasm: &Path, ctx: HostCtx) -> anyhow::Result<Self> {
        let (engine, module, ticker) = load(wasm)?;

        check_abi(&module)?;

        let mut linker: Linker<HostCtx> = Linker::new(&engine);
        abi::add_to_linker(&mut linker)?;
        wasi::add_to_linker(&mut linker)?;
        // Every import must be one the host provides (ngx_wavm: "missing host
        // function ... incompatible host interface").
        for import in module.imports() {
            let known = match import.module() {
                "env" => abi::IMPORTS.contains(&import.name()),
                "wasi_snapshot_preview1" => wasi::IMPORTS.contains(&import.name()),
                _ => false,
            };
            if !known {
                bail!(
                    "failed loading module: missing host function \"{}.{}\" (incompatible host interface)",
                    import.module(),
                    import.name()
                );
            }
        }

        let start = module
            .exports()
            .map(|e| e.name())
            .find(|n| *n == "_start" || *n == "_initialize")
            .map(str::to_string);

        let limit = ctx.opts.guest_call_limit;
        let deadline_ticks = (limit.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;

        let store = new_store(&engine, ctx);
        let mut vm = Self {
            engine,
            module,
            linker,
            store,
            live: None,
            start,
            deadline_ticks,
            _ticker: ticker,
        };
        vm.store.data_mut().trapped = true; // no instance yet
        vm.new_instance().map_err(|e| anyhow!(e))?;
        Ok(vm)
    }

    pub fn data(&self) -> &HostCtx {
        self.store.data()
    }

    pub fn data_mut(&mut self) -> &mut HostCtx {
        self.store.data_mut()
    }

    /// Whether a live (not trapped) instance exists.
    pub fn is_live(&self) -> bool {
        self.live.is_some() && !self.store.data().trapped
    }

    /// Makes sure a live instance exists, creating one if the current one
    /// trapped. Returns an error message when instantiation fails.
    pub fn ensure_instance(&mut self) -> Result<(), String> {
        if self.is_live() {
            return Ok(());
        }
        if self.store.data().faults.crashed() {
            // The worker is gone until the host fault is reaped.
            return Err("worker process exited".to_string());
        }
        self.new_instance()
    }

    /// Creates a new store and instance, moving the host data over, and runs
    /// the start function.
    fn new_instance(&mut self) -> Result<(), String> {
        self.live = None;
        let placeholder = HostCtx::placeholder(self.store.data());
        let old = std::mem::replace(&mut self.store, Store::new(&self.engine, placeholder));
        let data = old.into_data();
        self.store = new_store(&self.engine, data);
        self.store.epoch_deadline_trap();
        self.store.set_epoch_deadline(self.deadline_ticks);

        let instance = match self.linker.instantiate(&mut self.store, &self.module) {
            Ok(i) => i,
            Err(e) => {
                let msg = format!("failed instantiating module: {e}");
                self.store.data_mut().host_log(LogLevel::Error, msg.clone());
                return Err(msg);
            }
        };
        let funcs = EXPORTS
            .iter()
            .filter_map(|(export, name)| {
                instance
                    .get_func(&mut self.store, name)
                    .map(|f| (*export, f))
            })
            .collect();
        let memory = instance.get_memory(&mut self.store, "memory");
        let malloc = instance
            .get_func(&mut self.store, "malloc")
            .or_else(|| instance.get_func(&mut self.store, "proxy_on_memory_allocate"));
        {
            let ctx = self.store.data_mut();
            ctx.gen += 1;
            ctx.trapped = false;
            ctx.stats.instances_created += 1;
        }
        let gen = self.store.data().gen;
        self.store
            .data_mut()
            .host_log(LogLevel::Debug, format!("new instance (generation {gen})"));
        set_instance_handles(&mut self.store, memory, malloc);
        self.live = Some(Live { instance, funcs });

        if let Some(start) = self.start.clone() {
            let func = self
                .live
                .as_ref()
                .and_then(|l| l.instance.get_func(&mut self.store, &start));
            if let Some(func) = func {
                if let Guest::Trap(msg) = self.call_func(Cur::None, func, &[]) {
                    return Err(format!("failed instantiating module: {msg}"));
                }
            }
        }
        Ok(())
    }

    /// Calls an export for the given context. Arguments beyond the export's
    /// arity are dropped (ABI 0.1.0 callbacks have no `eof`).
    pub fn call(&mut self, cur: Cur, export: Export, args: &[i32]) -> Guest {
        if !self.is_live() {
            return Guest::NotCalled;
        }
        let func = self
            .live
            .as_ref()
            .and_then(|l| l.funcs.iter().find(|(e, _)| *e == export).map(|(_, f)| *f));
        match func {
            Some(func) => self.call_func(cur, func, args),
            None => {
                let name = export_name(export);
                self.store
                    .data_mut()
                    .host_log(LogLevel::Debug, format!("no \"{name}\" export, skipped"));
                Guest::NotCalled
            }
        }
    }

    fn call_func(&mut self, cur: Cur, func: Func, args: &[i32]) -> Guest {
        let ty = func.ty(&self.store);
        let params: Vec<Val> = ty
            .params()
            .enumerate()
            .map(|(i, p)| match p {
                wasmtime::ValType::I64 => Val::I64(i64::from(args.get(i).copied().unwrap_or(0))),
                _ => Val::I32(args.get(i).copied().unwrap_or(0)),
            })
            .collect();
        let mut results: Vec<Val> = ty.results().map(|_| Val::I32(0)).collect();

        let prev = self.store.data().cur;
        {
            let ctx = self.store.data_mut();
            ctx.cur = cur;
            ctx.trap_msg = None;
            ctx.stats.guest_calls += 1;
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        let started = Instant::now();
        let outcome = func.call(&mut self.store, &params, &mut results);
        let elapsed = started.elapsed();
        let ctx = self.store.data_mut();
        ctx.stats.wasm_time += elapsed;
        ctx.cur = prev;

        match outcome {
            Ok(()) => {
                let ret = results.first().and_then(|v| v.i32());
                Guest::Ok(ret)
            }
            Err(_) if ctx.faults.crashed() => {
                // A host fault, not a trap of the filter: the worker died.
                ctx.trapped = true;
                ctx.trap_msg = None;
                self.live = None;
                Guest::Trap("worker process exited".to_string())
            }
            Err(err) => {
                let msg = match ctx.trap_msg.take() {
                    Some(host) => host,
                    None => describe_trap(&err),
                };
                ctx.trapped = true;
                ctx.stats.traps += 1;
                let id = match cur {
                    Cur::None => 0,
                    _ => {
                        let saved = ctx.cur;
                        ctx.cur = cur;
                        let id = ctx.cur_context_id();
                        ctx.cur = saved;
                        id
                    }
                };
                if let Cur::Http { stream, .. } = cur {
                    if let Some(s) = ctx.streams.get_mut(&stream) {
                        s.trapped = true;
                    }
                }
                ctx.log(LogLevel::Error, id, false, msg.clone());
                self.live = None;
                Guest::Trap(msg)
            }
        }
    }

    /// Current linear memory size in bytes.
    pub fn memory_bytes(&self) -> usize {
        if self.live.is_none() {
            return 0;
        }
        self.store
            .data()
            .memory
            .map_or(0, |m| m.data_size(&self.store))
    }
}

fn set_instance_handles(store: &mut Store<HostCtx>, memory: Option<Memory>, malloc: Option<Func>) {
    let ctx = store.data_mut();
    ctx.memory = memory;
    ctx.malloc = malloc;
}

/// A readable trap message: the runtime's message, without the backtrace.
fn describe_trap(err: &anyhow::Error) -> String {
    if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
        return format!("wasm trap: {trap}");
    }
    let root = err.root_cause().to_string();
    let top = err.to_string();
    if root == top {
        top
    } else {
        format!("{top}: {root}")
    }
}

/// Kong loads modules exporting one of the known ABI versions, `malloc` (or
/// `proxy_on_memory_allocate`) and the root-context callbacks.
fn check_abi(module: &Module) -> anyhow::Result<()> {
    let names: Vec<&str> = module.exports().map(|e| e.name()).collect();
    let abi = [
        "proxy_abi_version_0_2_1",
        "proxy_abi_version_0_2_0",
        "proxy_abi_version_0_1_0",
    ];
    if !names.iter().any(|n| abi.contains(n)) {
        bail!("failed loading filter: unknown ABI version");
    }
    if !names
        .iter()
        .any(|n| *n == "malloc" || *n == "proxy_on_memory_allocate")
    {
        bail!("failed loading filter: missing malloc");
    }
    for required in [
        "proxy_on_context_create",
        "proxy_on_vm_start",
        "proxy_on_configure",
    ] {
        if !names.contains(&required) {
            bail!(
                "failed loading filter: missing one of: on_context_create, on_vm_start, on_plugin_start"
            );
        }
    }
    Ok(())
}
