//! `.wasm` size: the release build, `wasm-opt -Oz` (as `make build` runs it),
//! and the code each crate contributes, from the `name` section of an
//! unstripped build of the same code.

use anyhow::{bail, Context as _};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The flags of the Makefile's `build` target.
pub const WASM_OPT_FLAGS: &[&str] = &[
    "-Oz",
    "--enable-bulk-memory",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-nontrapping-float-to-int",
    "--enable-multivalue",
    "--enable-reference-types",
    "--enable-simd",
];

/// Runs `wasm-opt` on `input`; `Ok(None)` when it is not on PATH.
pub fn wasm_opt(input: &Path, output: &Path) -> anyhow::Result<Option<String>> {
    let version = match Command::new("wasm-opt").arg("--version").output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("running wasm-opt --version"),
    };
    if let Some(dir) = output.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = Command::new("wasm-opt")
        .args(WASM_OPT_FLAGS)
        .arg(input)
        .arg("-o")
        .arg(output)
        .output()
        .context("running wasm-opt")?;
    if !out.status.success() {
        bail!("wasm-opt failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Some(version))
}

/// Builds `ping-auth` for wasm32-wasip1 with the release profile but without
/// stripping (`CARGO_PROFILE_RELEASE_STRIP=false`), into its own target
/// directory, and returns the `.wasm` path.
pub fn build_with_names(workspace: &Path) -> anyhow::Result<PathBuf> {
    let target_dir = workspace.join("target").join("bench-names");
    crate::wasm_build::cargo_build(
        workspace,
        "ping-auth",
        &target_dir,
        &[("CARGO_PROFILE_RELEASE_STRIP", "false")],
    )?;
    let path = target_dir
        .join("wasm32-wasip1")
        .join("release")
        .join("ping_auth.wasm");
    if !path.is_file() {
        bail!("{} is missing after the build", path.display());
    }
    Ok(path)
}

/// One section of a module.
#[derive(Clone, Debug)]
pub struct Section {
    pub id: u8,
    /// The name of a custom section.
    pub custom: Option<String>,
    /// Payload start and length.
    pub start: usize,
    pub len: usize,
}

impl Section {
    pub fn label(&self) -> String {
        match (&self.custom, self.id) {
            (Some(name), _) => format!("custom \"{name}\""),
            (None, id) => SECTION_NAMES
                .get(usize::from(id))
                .map_or_else(|| format!("section {id}"), |n| n.to_string()),
        }
    }
}

const SECTION_NAMES: &[&str] = &[
    "custom",
    "type",
    "import",
    "function",
    "table",
    "memory",
    "global",
    "export",
    "start",
    "element",
    "code",
    "data",
    "data count",
];

/// A cursor over the bytes of a module.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        Self { bytes, pos }
    }

    fn byte(&mut self) -> anyhow::Result<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .context("unexpected end of the module")?;
        self.pos += 1;
        Ok(b)
    }

    /// An unsigned LEB128 number (up to 32 bits).
    fn leb(&mut self) -> anyhow::Result<usize> {
        let mut value: usize = 0;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("LEB128 number too long at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let end = self.pos.checked_add(n).context("length overflow")?;
        let s = self
            .bytes
            .get(self.pos..end)
            .context("unexpected end of the module")?;
        self.pos = end;
        Ok(s)
    }

    fn name(&mut self) -> anyhow::Result<String> {
        let n = self.leb()?;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// The sections of a module, in order.
pub fn sections(bytes: &[u8]) -> anyhow::Result<Vec<Section>> {
    if bytes.get(..4) != Some(b"\0asm".as_slice()) {
        bail!("not a Wasm module");
    }
    let mut r = Reader::new(bytes, 8);
    let mut out = Vec::new();
    while r.pos < bytes.len() {
        let id = r.byte()?;
        let len = r.leb()?;
        let start = r.pos;
        let custom = if id == 0 { Some(r.name()?) } else { None };
        r.pos = start;
        r.take(len)?;
        out.push(Section {
            id,
            custom,
            start,
            len,
        });
    }
    Ok(out)
}

/// Each function body's size (bytes in the code section, its size prefix
/// included) with its name from the `name` section, when there is one.
pub fn function_sizes(bytes: &[u8]) -> anyhow::Result<Vec<(Option<String>, usize)>> {
    let secs = sections(bytes)?;
    let mut imported = 0;
    let mut bodies: Vec<usize> = Vec::new();
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    for s in &secs {
        let mut r = Reader::new(bytes, s.start);
        match (s.id, s.custom.as_deref()) {
            (2, _) => {
                for _ in 0..r.leb()? {
                    r.name()?;
                    r.name()?;
                    match r.byte()? {
                        0 => {
                            r.leb()?;
                            imported += 1;
                        }
                        1 => {
                            r.byte()?;
                            skip_limits(&mut r)?;
                        }
                        2 => skip_limits(&mut r)?,
                        3 => {
                            r.byte()?;
                            r.byte()?;
                        }
                        kind => bail!("unknown import kind {kind}"),
                    }
                }
            }
            (10, _) => {
                for _ in 0..r.leb()? {
                    let before = r.pos;
                    let size = r.leb()?;
                    r.take(size)?;
                    bodies.push(r.pos - before);
                }
            }
            (0, Some("name")) => {
                r.name()?;
                let end = s.start + s.len;
                while r.pos < end {
                    let sub = r.byte()?;
                    let len = r.leb()?;
                    let next = r.pos + len;
                    if sub == 1 {
                        for _ in 0..r.leb()? {
                            let index = r.leb()?;
                            names.insert(index, r.name()?);
                        }
                    }
                    r.pos = next;
                }
            }
            _ => {}
        }
    }
    Ok(bodies
        .into_iter()
        .enumerate()
        .map(|(i, size)| (names.remove(&(imported + i)), size))
        .collect())
}

fn skip_limits(r: &mut Reader<'_>) -> anyhow::Result<()> {
    let flags = r.byte()?;
    r.leb()?;
    if flags & 1 != 0 {
        r.leb()?;
    }
    Ok(())
}

/// Names of wasi-libc's allocator (dlmalloc).
const DLMALLOC: &[&str] = &[
    "dlmalloc",
    "dlfree",
    "dispose_chunk",
    "prepend_alloc",
    "realloc",
    "malloc",
    "free",
    "calloc",
    "aligned_alloc",
    "posix_memalign",
    "internal_memalign",
    "try_realloc_chunk",
    "sbrk",
];

/// The crate a function belongs to, from its (mangled) name: the first crate
/// of the path, or of the self type in `<T as Trait>::f`. Generic code of
/// std instantiated for another crate's types counts as std.
pub fn crate_of(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("_ZN") {
        return legacy_crate(rest).unwrap_or_else(|| "(other)".into());
    }
    if let Some(rest) = name.strip_prefix("_R") {
        return v0_crate(rest).unwrap_or_else(|| "(other)".into());
    }
    if DLMALLOC.contains(&name) {
        return "dlmalloc (wasi-libc)".into();
    }
    if name.starts_with("proxy_on_") || name.starts_with("proxy_abi_version") {
        return "proxy_wasm".into();
    }
    "wasi-libc, builtins".into()
}

/// `_ZN<len><ident>...`: the first identifier, or the first crate inside
/// `_$LT$...` for `<T as Trait>` impls.
fn legacy_crate(rest: &str) -> Option<String> {
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let len: usize = rest.get(..digits)?.parse().ok()?;
    let ident = rest.get(digits..digits + len)?;
    let mut s = ident.trim_start_matches('_');
    loop {
        let before = s.len();
        for prefix in [
            "$LT$",
            "$RF$",
            "$BP$",
            "mut$u20$",
            "const$u20$",
            "$u5b$",
            "dyn$u20$",
        ] {
            s = s.strip_prefix(prefix).unwrap_or(s);
        }
        if s.len() == before {
            break;
        }
    }
    let name = leading_ident(s);
    // `<T as Trait>` with a generic or primitive self type: the trait's crate.
    let generic = name.len() == 1 && name.chars().all(|c| c.is_ascii_uppercase());
    if generic || PRIMITIVES.contains(&name.as_str()) {
        if let Some((_, tail)) = s.split_once("$u20$as$u20$") {
            return Some(leading_ident(tail)).filter(|n| !n.is_empty());
        }
    }
    (!name.is_empty()).then_some(name)
}

const PRIMITIVES: &[&str] = &[
    "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize", "f32",
    "f64", "bool", "char", "str",
];

fn leading_ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// v0 mangling: walk the path's prefix tags down to the first crate root
/// `C[s<disambiguator>_]<len><ident>`.
fn v0_crate(rest: &str) -> Option<String> {
    let b = rest.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'N' => i += 2,
            b'M' | b'X' => {
                i += 1;
                i = skip_disambiguator(b, i);
            }
            b'Y' | b'I' | b'R' | b'Q' | b'P' | b'O' | b'S' | b'A' | b'T' => i += 1,
            b'C' => {
                let mut j = skip_disambiguator(b, i + 1);
                let start = j;
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                let len: usize = rest.get(start..j)?.parse().ok()?;
                if b.get(j) == Some(&b'_') {
                    j += 1;
                }
                return rest.get(j..j + len).map(str::to_string);
            }
            _ => return None,
        }
    }
    None
}

fn skip_disambiguator(b: &[u8], mut i: usize) -> usize {
    if b.get(i) == Some(&b's') {
        while b.get(i).is_some_and(|&c| c != b'_') {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Groups the crates people ask about; everything else keeps its name.
pub fn group(krate: &str) -> String {
    match krate {
        "core" | "alloc" | "std" | "__rustc" | "panic_abort" | "compiler_builtins"
        | "rustc_demangle" | "std_detect" | "unwind" | "adler2" | "miniz_oxide" | "addr2line"
        | "gimli" => "std, core, alloc".into(),
        "serde_core" | "serde" => "serde".into(),
        "sha2" | "digest" | "block_buffer" | "generic_array" | "crypto_common" | "cpufeatures" => {
            "sha2 (digest, generic_array…)".into()
        }
        "hashbrown" | "foldhash" => "hashbrown, foldhash".into(),
        "serde_json" | "itoa" | "ryu" | "zmij" | "memchr" => {
            "serde_json (itoa, zmij, memchr)".into()
        }
        other => other.to_string(),
    }
}

/// Code bytes per group, largest first, with the function count.
pub fn by_crate(functions: &[(Option<String>, usize)]) -> Vec<(String, usize, usize)> {
    let mut totals: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (name, size) in functions {
        let g = match name {
            Some(n) => group(&crate_of(n)),
            None => "(unnamed)".into(),
        };
        let e = totals.entry(g).or_default();
        e.0 += size;
        e.1 += 1;
    }
    let mut out: Vec<(String, usize, usize)> =
        totals.into_iter().map(|(g, (b, n))| (g, b, n)).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Payload bytes of the sections with this id (custom sections: with this name).
pub fn section_bytes(secs: &[Section], id: u8, custom: Option<&str>) -> usize {
    secs.iter()
        .filter(|s| s.id == id && s.custom.as_deref() == custom)
        .map(|s| s.len)
        .sum()
}

/// `.wasm` sizes and the code by crate.
pub struct Sizes {
    pub release_path: PathBuf,
    pub release: usize,
    /// Path, size and wasm-opt version, when wasm-opt is on PATH.
    pub optimized: Option<(PathBuf, usize, String)>,
    /// Code bytes and function count per crate group, largest first.
    pub by_crate: Vec<(String, usize, usize)>,
    /// Code section of the unstripped build the names come from ...
    pub names_code: usize,
    /// ... and of the release build (they differ by a few hundred bytes:
    /// data addresses are LEB128-encoded in the code and move a little).
    pub release_code: usize,
    /// Payload bytes per section kind of the release build, largest first.
    pub release_sections: Vec<(String, usize)>,
}

impl Sizes {
    /// The artifact `make build` ships: wasm-opt's output when available.
    pub fn shipped(&self) -> (&Path, usize, &'static str) {
        match &self.optimized {
            Some((p, n, _)) => (p, *n, "after wasm-opt -Oz"),
            None => (
                &self.release_path,
                self.release,
                "release build, no wasm-opt on PATH",
            ),
        }
    }
}

/// Sizes of the release build at `release_path`: runs wasm-opt into
/// `target/bench/` and the unstripped build into `target/bench-names/`.
pub fn measure(release_path: &Path) -> anyhow::Result<Sizes> {
    let release_bytes = std::fs::read(release_path)
        .with_context(|| format!("reading {}", release_path.display()))?;
    let root = crate::wasm_build::workspace_root();
    let opt_path = root.join("target").join("bench").join("ping_auth.opt.wasm");
    let optimized = match wasm_opt(release_path, &opt_path)? {
        Some(version) => {
            let n = std::fs::metadata(&opt_path)?.len();
            Some((opt_path, usize::try_from(n)?, version))
        }
        None => None,
    };
    let names_bytes = std::fs::read(build_with_names(&root)?)?;
    let functions = function_sizes(&names_bytes)?;
    let names_code = section_bytes(&sections(&names_bytes)?, 10, None);
    let release_secs = sections(&release_bytes)?;
    let release_code = section_bytes(&release_secs, 10, None);
    let mut by_label: BTreeMap<String, usize> = BTreeMap::new();
    for s in &release_secs {
        *by_label.entry(s.label()).or_default() += s.len;
    }
    let mut release_sections: Vec<(String, usize)> = by_label.into_iter().collect();
    release_sections.sort_by_key(|s| std::cmp::Reverse(s.1));
    Ok(Sizes {
        release_path: release_path.to_path_buf(),
        release: release_bytes.len(),
        optimized,
        by_crate: by_crate(&functions),
        names_code,
        release_code,
        release_sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crates_from_legacy_and_v0_names() {
        assert_eq!(
            crate_of("_ZN9ping_auth8decision9interpret17h3333481ea9a30968E"),
            "ping_auth"
        );
        assert_eq!(
            crate_of("_ZN98_$LT$$RF$mut$u20$serde_json..de..Deserializer$LT$R$GT$$u20$as$u20$serde_core..de..Deserializer$GT$15deserialize_any17h3d980f2212af42a9E"),
            "serde_json"
        );
        assert_eq!(
            crate_of("_ZN77_$LT$ping_auth..filter..http..Http$u20$as$u20$proxy_wasm..traits..Context$GT$21on_http_call_response17hda259ec1043f4c18E"),
            "ping_auth"
        );
        assert_eq!(
            crate_of(
                "_RNvNtNtNtNtCsdHhIpgkcIfN_4core3num7flt2dec8strategy6dragon15format_shortest"
            ),
            "core"
        );
        assert_eq!(
            crate_of("_RNvXs9_NtNtNtCsdHhIpgkcIfN_4core3fmt3num3implNtB9_7Display3fmt"),
            "core"
        );
        assert_eq!(
            crate_of("_RNvMs3_NtCsi9YzqDQQz2q_5alloc3stre18to_ascii_lowercase"),
            "alloc"
        );
        assert_eq!(
            crate_of(
                "_ZN45_$LT$T$u20$as$u20$alloc..string..ToString$GT$9to_string17h9de6e0a2af0d3518E"
            ),
            "alloc"
        );
        assert_eq!(
            crate_of("_ZN55_$LT$str$u20$as$u20$serde_json..value..index..Index$GT$10index_into17h5a07682e4c1c4078E"),
            "serde_json"
        );
        assert_eq!(crate_of("dlmalloc"), "dlmalloc (wasi-libc)");
        assert_eq!(crate_of("proxy_on_request_headers"), "proxy_wasm");
        assert_eq!(crate_of("strlen"), "wasi-libc, builtins");
    }

    #[test]
    fn sections_and_function_sizes_of_a_tiny_module() {
        // (module (import "env" "f" (func)) (func) (func nop)) with names "a", "b".
        let module: Vec<u8> = [
            &b"\0asm\x01\0\0\0"[..],
            &[1, 4, 1, 0x60, 0, 0],                         // type: () -> ()
            &[2, 9, 1, 3, b'e', b'n', b'v', 1, b'f', 0, 0], // import env.f
            &[3, 3, 2, 0, 0],                               // two functions
            &[10, 8, 2, 2, 0, 0x0b, 3, 0, 0x01, 0x0b],      // bodies of 3 and 4 bytes
            &[
                0, 14, 4, b'n', b'a', b'm', b'e', 1, 7, 2, 1, 1, b'a', 2, 1, b'b',
            ],
        ]
        .concat();
        let secs = sections(&module).unwrap_or_default();
        assert_eq!(secs.len(), 5);
        assert_eq!(section_bytes(&secs, 10, None), 8);
        let f = function_sizes(&module).unwrap_or_default();
        assert_eq!(f, vec![(Some("a".into()), 3), (Some("b".into()), 4)]);
    }
}
