"""Static instruction counts of the hot kernels: what each loop of the compiled code executes.

The kernels whose PERF.md targets are open are issue- or integer-pipeline bound (ncu), so the
instructions a loop iteration issues are what a change must lower. This tool needs no GPU: it
compiles the PERF.md workloads' template instances with NVRTC (exactly as at run time, via
robocache._runtime.compile_for_arch), disassembles the cubin with cuobjdump, and prints for
every backward branch (a loop) its length in instructions and its instruction mix, plus each
kernel's registers. Compare two commits' output to see what a kernel change did before spending
GPU time on it; the GPU (benchmarks/) has the last word.

    python tools/sass_loops.py [--arch sm_90] [--kernel REGEX]

cuobjdump is not in the pip wheels robocache uses: put it on PATH or name it in $CUOBJDUMP. Its
own wheel has it, e.g. `pip download --no-deps nvidia-cuda-cuobjdump` and unzip
(nvidia/cu13/bin/cuobjdump; chmod +x).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# (module attribute in robocache._kernels, template instance): the PERF.md workloads' kernels
HOT = (
    ("RESAMPLE", "resample_kernel<rc_bf16, float, true>"),     # resample 32x500 / 256x1000, bf16
    ("RESAMPLE", "fuse_kernel<rc_bf16, float>"),               # fuse, 3 streams
    ("IMAGES", "crop_resize_kernel<float, 3, false, 4, false>"),    # crop 84, float32
    ("IMAGES", "crop_resize_kernel<rc_bf16, 3, false, 4, false>"),  # crop 84, bfloat16
    ("IMAGES", "crop_resize_kernel<rc_bf16, 3, true, 4, false>"),   # 4 x 480x640 -> 224, bf16
    ("IMAGES", "crop_resize_kernel<float, 3, false, 4, true>"),     # crop 84 to [0, 1], exact
    ("VOXEL", "voxel_scatter_kernel<float, false>"),           # 500k points -> 128^3 count
    ("WINDOWS", "window_batch_kernel"),                        # the loader's batch
)

_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
_BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def cuobjdump() -> str:
    tool = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if not tool:
        sys.exit("cuobjdump not found: set $CUOBJDUMP or put it on PATH (see this file's "
                 "docstring)")
    return tool


def opcode(instr: str) -> str:
    """'@!P0 IMAD.WIDE.U32 R2, ...' -> 'IMAD'."""
    return re.sub(r"^@!?U?P\w+\s+", "", instr).split()[0].split(".")[0]


def loops(sass: str) -> list[tuple[int, int, list[str]]]:
    """(start, end, instructions) of each backward branch's span in one function's SASS."""
    code = [(int(a, 16), text.strip()) for a, text in _INSTR.findall(sass)]
    found = []
    for addr, text in code:
        m = _BRANCH.search(text)
        if m and int(m.group(1), 16) < addr:
            start = int(m.group(1), 16)
            found.append((start, addr, [t for a, t in code if start <= a <= addr]))
    return found


def compiled(module_name: str, arch: str, workdir: Path, done: dict):
    """(module, cubin path, lowered names) of one module for one arch, compiled once per call of
    main: `done` keeps what was compiled (each compile builds every instance of the module)."""
    from robocache import _kernels, _runtime

    key = (module_name, arch)
    if key not in done:
        module = getattr(_kernels, module_name)
        res = _runtime.compile_for_arch(module, arch, keep_cubin=True)
        if not res.ok:
            sys.exit(f"{module.source} failed to compile for {arch}:\n{res.log}")
        cubin = workdir / f"{module.source}.{arch}.cubin"
        cubin.write_bytes(res.cubin)
        done[key] = (module, cubin, res.lowered_names)
    return done[key]


def report(module_name: str, instance: str, arch: str, tool: str, workdir: Path,
           done: dict) -> None:
    module, cubin, lowered = compiled(module_name, arch, workdir, done)
    mangled = lowered[instance]
    sass = subprocess.run([tool, "-sass", "-fun", mangled, str(cubin)], check=True,
                          capture_output=True, text=True).stdout
    usage = subprocess.run([tool, "-res-usage", "-fun", mangled, str(cubin)], check=True,
                           capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    total = len(_INSTR.findall(sass))
    print(f"{instance} ({module.source}, {arch}): {total} instructions, "
          f"{regs.group(1) if regs else '?'} registers")
    for start, end, body in loops(sass):
        mix = collections.Counter(opcode(t) for t in body)
        top = ", ".join(f"{k} {v}" for k, v in mix.most_common(10))
        print(f"  loop {start:#06x}-{end:#06x}: {len(body):4d} instructions ({top})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--kernel", default="", help="only instances matching this regex")
    args = ap.parse_args(argv)
    tool = cuobjdump()
    done: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for module_name, instance in HOT:
            if re.search(args.kernel, instance):
                report(module_name, instance, args.arch, tool, Path(tmp), done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
