//! The callable policy's shared half: which `module:function` a flow.yaml may name.
//!
//! The whole rule needs the worker's interpreter (where a module lives, which distributions
//! are installed), so the runner enforces it before any import, for jobs from any gateway
//! (`daemons/worker/runner/pyoco_runner.py`, "Callable policy"). The gateway refuses at submit
//! what every worker would refuse anyway — the Python standard library, by module name — and,
//! when its own `PYOCO_CALLABLE_ALLOW` is set, anything outside that list, so a submitter gets a
//! 422 instead of a FAILED run.

/// The original's example task module: allowed by name wherever it is found (its quickstart).
pub const EXAMPLE_TASK_MODULE: &str = "pyoco_server._workflow_test_tasks";

/// `PYOCO_CALLABLE_ALLOW`: comma-separated module prefixes (`mycorp.tasks` allows that module
/// and its submodules), exact callables (`mymod:func`), or `*` for anything (the original's
/// rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallableAllow {
    anything: bool,
    entries: Vec<String>,
}

impl CallableAllow {
    /// Parses the setting; an entry that cannot name a module is an error naming it.
    pub fn parse(spec: &str) -> Result<CallableAllow, String> {
        let mut allow = CallableAllow::default();
        for raw in spec.split(',') {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                allow.anything = true;
                continue;
            }
            let (module, attr) = match entry.split_once(':') {
                Some((m, a)) => (m, Some(a)),
                None => (entry.trim_end_matches('.'), None),
            };
            let dotted_ok = !module.is_empty() && module.split('.').all(is_identifier);
            if !dotted_ok || attr.is_some_and(|a| !is_identifier(a)) {
                return Err(format!(
                    "PYOCO_CALLABLE_ALLOW entry {entry:?} is not a module prefix (a.b), a callable \
                     (a.b:func) or *; separate entries with commas"
                ));
            }
            allow.entries.push(match attr {
                Some(a) => format!("{module}:{a}"),
                None => module.to_string(),
            });
        }
        Ok(allow)
    }

    /// Anything goes (`*`).
    pub fn anything(&self) -> bool {
        self.anything
    }

    /// Whether the setting lists anything at all (unset: only the standard library is refused).
    pub fn is_restrictive(&self) -> bool {
        !self.anything && !self.entries.is_empty()
    }

    /// Whether an entry names `module:attr`.
    pub fn allows(&self, module: &str, attr: &str) -> bool {
        self.anything
            || self.entries.iter().any(|e| match e.split_once(':') {
                Some((m, a)) => m == module && a == attr,
                None => {
                    module == e
                        || module
                            .strip_prefix(e.as_str())
                            .is_some_and(|r| r.starts_with('.'))
                }
            })
    }

    /// The setting, normalised (`*`, the entries joined by commas, or empty when unset).
    pub fn as_setting(&self) -> String {
        if self.anything {
            "*".into()
        } else {
            self.entries.join(",")
        }
    }

    /// The setting for messages (`(unset)` when empty).
    pub fn describe(&self) -> String {
        match self.as_setting() {
            s if s.is_empty() => "(unset)".into(),
            s => s,
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
}

/// `module:attr` → (module, attr), trimmed; no `:` → (the whole text, "").
fn split_callable(callable: &str) -> (&str, &str) {
    let (module, attr) = callable.split_once(':').unwrap_or((callable, ""));
    (module.trim(), attr.trim())
}

/// Whether `module` (dotted) belongs to the Python standard library, by its top-level name.
pub fn is_standard_library(module: &str) -> bool {
    let top = module.split('.').next().unwrap_or(module);
    STDLIB_TOP_LEVEL.binary_search(&top).is_ok() || matches!(top, "__main__" | "__mp_main__")
}

/// Why the gateway refuses task `task`'s `callable` at submit, or `None`. The text names the
/// callable, the rule and the fix (it becomes the 422 detail).
pub fn submit_refusal(allow: &CallableAllow, task: &str, callable: &str) -> Option<String> {
    let (module, attr) = split_callable(callable);
    if allow.allows(module, attr) {
        return None;
    }
    if is_standard_library(module) {
        return Some(format!(
            "callable_not_allowed: tasks.{task}.callable {callable:?} is in the Python standard library \
             (module {module:?}), which workers do not run as a task; fix: call it from a function in \
             your own task module (on the worker's --pythonpath or installed with `pyococtl runtime \
             setup PACKAGE`)"
        ));
    }
    if allow.is_restrictive() && module != EXAMPLE_TASK_MODULE {
        return Some(format!(
            "callable_not_allowed: tasks.{task}.callable {callable:?} is outside this gateway's \
             PYOCO_CALLABLE_ALLOW ({}); fix: use a task module from that list, or ask the operator to \
             add {module:?} to it",
            allow.describe()
        ));
    }
    None
}

/// Why a key with its own allow list (API-key record field `callable_allow`) may not submit
/// task `task`'s `callable`, or `None`.
pub fn key_refusal(key_allow: &CallableAllow, task: &str, callable: &str) -> Option<String> {
    let (module, attr) = split_callable(callable);
    if key_allow.allows(module, attr) || module == EXAMPLE_TASK_MODULE {
        return None;
    }
    Some(format!(
        "callable_not_allowed: tasks.{task}.callable {callable:?} is outside this API key's \
         callable_allow ({}); fix: use a task module from that list, or ask the operator for a key \
         that allows {module:?}",
        key_allow.describe()
    ))
}

/// Top-level module names of CPython 3.11 and 3.12's standard library
/// (`sys.stdlib_module_names` ∪ `sys.builtin_module_names`), sorted for binary search.
const STDLIB_TOP_LEVEL: &[&str] = &[
    "__future__",
    "_abc",
    "_aix_support",
    "_ast",
    "_asyncio",
    "_bisect",
    "_blake2",
    "_bootsubprocess",
    "_bz2",
    "_codecs",
    "_codecs_cn",
    "_codecs_hk",
    "_codecs_iso2022",
    "_codecs_jp",
    "_codecs_kr",
    "_codecs_tw",
    "_collections",
    "_collections_abc",
    "_compat_pickle",
    "_compression",
    "_contextvars",
    "_crypt",
    "_csv",
    "_ctypes",
    "_curses",
    "_curses_panel",
    "_datetime",
    "_dbm",
    "_decimal",
    "_elementtree",
    "_frozen_importlib",
    "_frozen_importlib_external",
    "_functools",
    "_gdbm",
    "_hashlib",
    "_heapq",
    "_imp",
    "_io",
    "_json",
    "_locale",
    "_lsprof",
    "_lzma",
    "_markupbase",
    "_md5",
    "_msi",
    "_multibytecodec",
    "_multiprocessing",
    "_opcode",
    "_operator",
    "_osx_support",
    "_overlapped",
    "_pickle",
    "_posixshmem",
    "_posixsubprocess",
    "_py_abc",
    "_pydatetime",
    "_pydecimal",
    "_pyio",
    "_pylong",
    "_queue",
    "_random",
    "_scproxy",
    "_sha1",
    "_sha2",
    "_sha256",
    "_sha3",
    "_sha512",
    "_signal",
    "_sitebuiltins",
    "_socket",
    "_sqlite3",
    "_sre",
    "_ssl",
    "_stat",
    "_statistics",
    "_string",
    "_strptime",
    "_struct",
    "_symtable",
    "_thread",
    "_threading_local",
    "_tkinter",
    "_tokenize",
    "_tracemalloc",
    "_typing",
    "_uuid",
    "_warnings",
    "_weakref",
    "_weakrefset",
    "_winapi",
    "_zoneinfo",
    "abc",
    "aifc",
    "antigravity",
    "argparse",
    "array",
    "ast",
    "asynchat",
    "asyncio",
    "asyncore",
    "atexit",
    "audioop",
    "base64",
    "bdb",
    "binascii",
    "bisect",
    "builtins",
    "bz2",
    "cProfile",
    "calendar",
    "cgi",
    "cgitb",
    "chunk",
    "cmath",
    "cmd",
    "code",
    "codecs",
    "codeop",
    "collections",
    "colorsys",
    "compileall",
    "concurrent",
    "configparser",
    "contextlib",
    "contextvars",
    "copy",
    "copyreg",
    "crypt",
    "csv",
    "ctypes",
    "curses",
    "dataclasses",
    "datetime",
    "dbm",
    "decimal",
    "difflib",
    "dis",
    "distutils",
    "doctest",
    "email",
    "encodings",
    "ensurepip",
    "enum",
    "errno",
    "faulthandler",
    "fcntl",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "gc",
    "genericpath",
    "getopt",
    "getpass",
    "gettext",
    "glob",
    "graphlib",
    "grp",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http",
    "idlelib",
    "imaplib",
    "imghdr",
    "imp",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "lib2to3",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "mailcap",
    "marshal",
    "math",
    "mimetypes",
    "mmap",
    "modulefinder",
    "msilib",
    "msvcrt",
    "multiprocessing",
    "netrc",
    "nis",
    "nntplib",
    "nt",
    "ntpath",
    "nturl2path",
    "numbers",
    "opcode",
    "operator",
    "optparse",
    "os",
    "ossaudiodev",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pipes",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "posix",
    "posixpath",
    "pprint",
    "profile",
    "pstats",
    "pty",
    "pwd",
    "py_compile",
    "pyclbr",
    "pydoc",
    "pydoc_data",
    "pyexpat",
    "queue",
    "quopri",
    "random",
    "re",
    "readline",
    "reprlib",
    "resource",
    "rlcompleter",
    "runpy",
    "sched",
    "secrets",
    "select",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "site",
    "smtpd",
    "smtplib",
    "sndhdr",
    "socket",
    "socketserver",
    "spwd",
    "sqlite3",
    "sre_compile",
    "sre_constants",
    "sre_parse",
    "ssl",
    "stat",
    "statistics",
    "string",
    "stringprep",
    "struct",
    "subprocess",
    "sunau",
    "symtable",
    "sys",
    "sysconfig",
    "syslog",
    "tabnanny",
    "tarfile",
    "telnetlib",
    "tempfile",
    "termios",
    "textwrap",
    "this",
    "threading",
    "time",
    "timeit",
    "tkinter",
    "token",
    "tokenize",
    "tomllib",
    "trace",
    "traceback",
    "tracemalloc",
    "tty",
    "turtle",
    "turtledemo",
    "types",
    "typing",
    "unicodedata",
    "unittest",
    "urllib",
    "uu",
    "uuid",
    "venv",
    "warnings",
    "wave",
    "weakref",
    "webbrowser",
    "winreg",
    "winsound",
    "wsgiref",
    "xdrlib",
    "xml",
    "xmlrpc",
    "xxsubtype",
    "zipapp",
    "zipfile",
    "zipimport",
    "zlib",
    "zoneinfo",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdlib_list_is_sorted_and_covers_the_dangerous_ones() {
        assert!(STDLIB_TOP_LEVEL.windows(2).all(|w| w[0] < w[1]));
        for m in [
            "os",
            "os.path",
            "subprocess",
            "builtins",
            "posix",
            "importlib.util",
            "__main__",
            "_io",
            "ctypes",
            "shutil",
            "pty",
            "socket",
        ] {
            assert!(is_standard_library(m), "{m}");
        }
        for m in ["pyoco_server", "mytasks", "yaml", "osx", "subprocess2"] {
            assert!(!is_standard_library(m), "{m}");
        }
    }

    #[test]
    fn allow_list_prefixes_end_at_a_dot() {
        let a = CallableAllow::parse(" mycorp.tasks , json:dumps,,").unwrap();
        assert!(a.allows("mycorp.tasks", "f") && a.allows("mycorp.tasks.sub", "f"));
        assert!(!a.allows("mycorp.tasksx", "f") && !a.allows("mycorp", "f"));
        assert!(a.allows("json", "dumps") && !a.allows("json", "loads"));
        assert_eq!(a.describe(), "mycorp.tasks,json:dumps");
        assert!(CallableAllow::parse("*").unwrap().allows("os", "system"));
        assert!(!CallableAllow::parse("").unwrap().is_restrictive());
        for bad in ["a b", "1mod", "mod:", "a..b", "mod:f.g"] {
            let e = CallableAllow::parse(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains("PYOCO_CALLABLE_ALLOW"), "{e}");
        }
    }

    #[test]
    fn submit_refuses_the_standard_library_and_what_the_list_leaves_out() {
        let open = CallableAllow::default();
        let e = submit_refusal(&open, "t", "subprocess:getoutput").unwrap();
        assert!(
            e.starts_with("callable_not_allowed: tasks.t.callable \"subprocess:getoutput\""),
            "{e}"
        );
        assert!(e.contains("standard library") && e.contains("fix: "), "{e}");
        assert_eq!(submit_refusal(&open, "t", "mytasks:f"), None);
        let listed = CallableAllow::parse("mytasks").unwrap();
        assert_eq!(submit_refusal(&listed, "t", "mytasks.sub:f"), None);
        assert_eq!(
            submit_refusal(&listed, "t", "pyoco_server._workflow_test_tasks:add_one"),
            None
        );
        let e = submit_refusal(&listed, "t", "other:f").unwrap();
        assert!(
            e.contains("outside this gateway's PYOCO_CALLABLE_ALLOW (mytasks)"),
            "{e}"
        );
        assert_eq!(
            submit_refusal(&CallableAllow::parse("*").unwrap(), "t", "os:system"),
            None
        );
        assert_eq!(
            submit_refusal(&CallableAllow::parse("json").unwrap(), "t", "json:dumps"),
            None
        );
    }
}
