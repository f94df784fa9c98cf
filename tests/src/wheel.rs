//! Hand-built wheels for tests: a zip with one package and its `*.dist-info` (METADATA, WHEEL,
//! top_level.txt, RECORD), written by the test venv's Python so no build backend is needed.

use std::path::{Path, PathBuf};

use crate::{py311, run_python_program, OutputExt};

/// Writes `<norm(dist)>-<version>-<tag>.whl` into `dir` with package `module` (its `__init__.py` = `src`).
pub async fn make_task_wheel(
    dir: &Path,
    dist: &str,
    version: &str,
    module: &str,
    tag: &str,
    src: &str,
) -> PathBuf {
    let script = r#"import sys, zipfile
out_dir, dist, version, module, tag, src = sys.argv[1:7]
norm = dist.replace("-", "_")
out = f"{out_dir}/{norm}-{version}-{tag}.whl"
info = f"{norm}-{version}.dist-info/"
files = {
    f"{module}/__init__.py": src,
    info + "METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n",
    info + "WHEEL": f"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: {tag}\n",
    info + "top_level.txt": module + "\n",
}
record = "".join(f"{n},,\n" for n in files) + info + "RECORD,,\n"
with zipfile.ZipFile(out, "w") as z:
    for n, t in files.items():
        z.writestr(n, t)
    z.writestr(info + "RECORD", record)
print(out)
"#;
    let out = run_python_program(
        &py311(),
        &[
            "-c",
            script,
            dir.to_str().unwrap(),
            dist,
            version,
            module,
            tag,
            src,
        ],
        &[],
    )
    .await;
    out.assert_success();
    PathBuf::from(out.stdout_text().trim())
}
