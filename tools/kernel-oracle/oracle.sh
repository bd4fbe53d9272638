#!/usr/bin/env bash
# The real Linux 7.2 beside the model: Debian's kernel under QEMU with lib/test_hmm.c loaded,
# the kernel's own hmm-tests, and swift-hmm's native scenario runner (hmm-oracle-runner) inside
# the VM.
#
#   oracle.sh prepare          fetch and build everything into the cache (idempotent)
#   oracle.sh status           what the cache holds, what is missing
#   oracle.sh run [opts] -- CMD...
#                              boot the VM, run CMD (a shell command line) in /oracle inside it,
#                              print its output, exit with its status
#       --file HOST[:GUEST]    copy a host file into the VM (GUEST relative to /oracle)
#       --dir HOST[:GUEST]     copy a host directory into the VM
#       --timeout SECONDS      give up after this long (default 900); exit 124
#       --coherent             give test_hmm special-purpose memory for the coherent devices
#       --mem MIB              the VM's RAM in MiB (default 3072; --coherent makes it 5120)
#   oracle.sh selftests [--coherent] [--filter TEXT]
#                              run the kernel's hmm-tests, one case at a time, and print each
#                              case's TAP lines, "@@CASE NAME STATUS T0 T1" (uptime before and
#                              after) and at the end "@@KERNEL RELEASE"
#   oracle.sh host-diff CMDS   play swift-hmm's host differential commands (HostDifferentialTests,
#                              HMM_HOST_DIFF_RECORD=CMDS) on the kernel, print its results
#   oracle.sh clean            delete the cache
#
# Cache: $HMM_ORACLE_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/swift-hmm/kernel-oracle.
# Kernel: Debian's linux-binary-$KVER from trixie-backports (KVER=7.2.12+deb13-amd64 unless
# HMM_ORACLE_KVER says otherwise); sources: linux-source-7.2 (forky), the same 7.2.12.
# Nothing is added to the system's apt sources: the oracle has an apt list of its own.
# QEMU runs with TCG (KVM is not usable on these machines).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${HMM_ORACLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swift-hmm/kernel-oracle}
KVER=${HMM_ORACLE_KVER:-7.2.12+deb13-amd64}
case "$KVER" in *[!0-9A-Za-z.+~-]*|"") echo "kernel-oracle: HMM_ORACLE_KVER: not a kernel version: $KVER" >&2; exit 2 ;; esac
KREL=${KVER%-amd64}                 # 7.2.12+deb13
KSRC_PKG=linux-source-7.2
MIRROR=${HMM_ORACLE_MIRROR:-http://deb.debian.org/debian}
ROOT=$CACHE/trixie-root             # Debian trixie (gcc 14) for building the module and tests
OUT=$CACHE/out                      # vmlinuz, test_hmm.ko, hmm-tests, hmm-oracle-runner, initramfs

say() { printf 'kernel-oracle: %s\n' "$*" >&2; }
die() { say "$*"; exit 2; }

apt_opts() {
    printf '%s\n' -o "Dir::Etc::sourcelist=$CACHE/apt/sources.list" -o "Dir::Etc::sourceparts=$CACHE/apt/empty" \
        -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache" \
        -o "Dir::Etc::preferences=$CACHE/apt/empty/none" -o "Dir::Etc::preferencesparts=$CACHE/apt/empty" \
        -o "APT::Sandbox::User=root"
}

# --- host tools --------------------------------------------------------------------------------
need_host_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x /bin/busybox ] && file_is_static /bin/busybox || missing+=(busybox-static)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v xz >/dev/null || missing+=(xz-utils)
    command -v zstd >/dev/null || missing+=(zstd)
    command -v apt-get >/dev/null || die "apt-get not found: the oracle takes its kernel from Debian's packages"
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ]; then
        say "installing host tools: ${missing[*]}"
        # A fresh machine may have no package lists yet: update them once if the install fails.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } \
            || die "could not install ${missing[*]} (apt-get install ${missing[*]})"
    else
        die "missing host tools: ${missing[*]} — install them: sudo apt-get install ${missing[*]}"
    fi
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

# --- packages ----------------------------------------------------------------------------------
fetch_packages() {
    local stamp=$CACHE/stamps/packages-$KVER
    [ -f "$stamp" ] && return 0
    mkdir -p "$CACHE/apt/lists/partial" "$CACHE/apt/cache/archives/partial" "$CACHE/apt/empty" "$CACHE/debs" "$CACHE/stamps"
    cat > "$CACHE/apt/sources.list" <<EOF
deb $MIRROR trixie main
deb $MIRROR trixie-backports main
deb $MIRROR forky main
EOF
    local -a A; mapfile -t A < <(apt_opts)
    say "apt-get update (the oracle's own list: trixie, trixie-backports, forky)"
    apt-get "${A[@]}" update -qq >/dev/null 2>"$CACHE/apt/update.err" || { cat "$CACHE/apt/update.err" >&2; die "apt-get update failed"; }
    local pkgs=(linux-binary-$KVER linux-headers-$KVER linux-headers-$KREL-common linux-kbuild-$KREL $KSRC_PKG)
    for p in "${pkgs[@]}"; do
        apt-cache "${A[@]}" show "$p" >/dev/null 2>&1 || die "package $p is not in trixie/trixie-backports/forky (set HMM_ORACLE_KVER to one that is: apt-cache search linux-binary-7.2)"
    done
    say "downloading ${pkgs[*]}"
    (cd "$CACHE/debs" && apt-get "${A[@]}" download -qq "${pkgs[@]}" >/dev/null) || die "apt-get download failed"
    touch "$stamp"
}

deb_of() { ls "$CACHE"/debs/"$1"_*.deb 2>/dev/null | head -1 || true; }

# zram (and the compressor it depends on) from Debian's module package, for the swap scenarios:
# the runner makes /dev/zram0 a swap area of the size a script's `machine swap=` asks for.
fetch_zram() {
    local stamp=$CACHE/stamps/zram-$KVER
    [ -f "$stamp" ] && [ -f "$OUT/zram.ko" ] && return 0
    local -a A; mapfile -t A < <(apt_opts)
    local pkg=linux-modules-$KVER
    if [ -z "$(deb_of "$pkg")" ]; then
        say "downloading $pkg (zram for the swap scenarios)"
        (cd "$CACHE/debs" && apt-get "${A[@]}" download -qq "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    fi
    local tmp; tmp=$(mktemp -d)
    dpkg-deb --fsys-tarfile "$(deb_of "$pkg")" | tar -x -C "$tmp" --wildcards '*/zram.ko*' '*/lz4hc_compress.ko*' \
        || die "no zram.ko or lz4hc_compress.ko in $pkg"
    mkdir -p "$OUT"
    local m f
    for m in zram lz4hc_compress; do
        f=$(find "$tmp" -name "$m.ko*" | head -1); [ -n "$f" ] || die "no $m.ko in $pkg"
        case "$f" in *.xz) xz -dc "$f" ;; *.zst) zstd -dc "$f" ;; *) cat "$f" ;; esac > "$OUT/$m.ko" || die "cannot unpack $f"
    done
    rm -rf "$tmp"
    touch "$stamp"
}

# --- the build root ----------------------------------------------------------------------------
make_root() {
    local stamp=$CACHE/stamps/root
    [ -f "$stamp" ] && return 0
    [ "$(id -u)" = 0 ] || die "debootstrap needs root (run prepare as root once; later runs reuse the cache)"
    rm -rf "$ROOT"
    say "debootstrap trixie (gcc-14, make, libc6-dev, linux-libc-dev) into $ROOT (about a minute)"
    debootstrap --variant=minbase --include=gcc-14,make,libc6-dev,linux-libc-dev,bc,kmod,libelf-dev \
        trixie "$ROOT" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
    touch "$stamp"
}

unpack_sources() {
    local stamp=$CACHE/stamps/unpacked-$KVER
    [ -f "$stamp" ] && return 0
    say "unpacking kernel image, headers, kbuild and the 7.2 sources"
    for p in linux-binary-$KVER linux-headers-$KVER linux-headers-$KREL-common linux-kbuild-$KREL; do
        local d; d=$(deb_of "$p"); [ -n "$d" ] || die "missing package file for $p in $CACHE/debs"
        dpkg-deb -x "$d" "$ROOT"
    done
    local img
    img=$(ls "$ROOT"/boot/vmlinuz-"$KVER" "$ROOT"/usr/lib/modules/"$KVER"/vmlinuz 2>/dev/null | head -1 || true)
    [ -n "$img" ] || die "no vmlinuz in linux-binary-$KVER"
    mkdir -p "$OUT" && cp "$img" "$OUT/vmlinuz"
    local src; src=$(deb_of "$KSRC_PKG"); [ -n "$src" ] || die "missing $KSRC_PKG package file"
    rm -rf "$CACHE/src" && mkdir -p "$CACHE/src"
    dpkg-deb -x "$src" "$CACHE/src/deb"
    local tarball; tarball=$(ls "$CACHE"/src/deb/usr/src/linux-source-*.tar.xz 2>/dev/null | head -1 || true)
    [ -n "$tarball" ] || die "no linux-source-*.tar.xz in $KSRC_PKG"
    tar -xJf "$tarball" -C "$CACHE/src" --strip-components=1 --wildcards \
        '*/lib/test_hmm.c' '*/lib/test_hmm_uapi.h' '*/tools/testing/selftests/*' '*/tools/include/*' '*/tools/arch/x86/*' \
        '*/mm/gup_test.h' '*/mm/gup_test.c'
    rm -rf "$CACHE/src/deb"
    touch "$stamp"
}

# A command in the trixie root, with /proc mounted there for the time of it (objtool reads it).
in_root() {
    local status=0
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root /bin/sh -c "$1" || status=$?
    umount "$ROOT/proc" 2>/dev/null || true
    return $status
}

build_module() {
    local stamp=$CACHE/stamps/module-$KVER
    [ -f "$stamp" ] && return 0
    say "building test_hmm.ko against linux-headers-$KVER with gcc-14 (in the trixie root)"
    rm -rf "$ROOT/build/test_hmm" && mkdir -p "$ROOT/build/test_hmm"
    cp "$CACHE/src/lib/test_hmm.c" "$CACHE/src/lib/test_hmm_uapi.h" "$ROOT/build/test_hmm/"
    echo 'obj-m := test_hmm.o' > "$ROOT/build/test_hmm/Kbuild"
    in_root "make -C /usr/src/linux-headers-$KVER M=/build/test_hmm CC=gcc-14 HOSTCC=gcc-14 CONFIG_DEBUG_INFO_BTF_MODULES= modules" \
        > "$CACHE/module.log" 2>&1 || { tail -30 "$CACHE/module.log" >&2; die "test_hmm.ko did not build (log: $CACHE/module.log)"; }
    cp "$ROOT/build/test_hmm/test_hmm.ko" "$OUT/"
    # mm/gup_test.c as a module (Debian's kernel has no CONFIG_GUP_TEST): hmm_gup_test needs
    # /sys/kernel/debug/gup_test. linux/module.h makes its late_initcall a module_init; a
    # second file gives the module its license and get_pfnblock_migratetype, which the kernel
    # does not export: gup_test's only use of it is the WARN that a long-term pinned page is
    # not in a CMA pageblock, and this VM has no CMA area, so every block is MIGRATE_MOVABLE.
    rm -rf "$ROOT/build/gup_test" && mkdir -p "$ROOT/build/gup_test"
    cp "$CACHE/src/mm/gup_test.c" "$CACHE/src/mm/gup_test.h" "$ROOT/build/gup_test/"
    cat > "$ROOT/build/gup_test/gup_test_license.c" <<'EOF'
#include <linux/module.h>
#include <linux/mmzone.h>
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("mm/gup_test.c for the swift-hmm kernel oracle");
enum migratetype get_pfnblock_migratetype(const struct page *page, unsigned long pfn)
{
	return MIGRATE_MOVABLE;
}
EOF
    printf 'obj-m := gup_test_oracle.o\ngup_test_oracle-y := gup_test.o gup_test_license.o\nCFLAGS_gup_test.o := -include linux/module.h\n' > "$ROOT/build/gup_test/Kbuild"
    in_root "make -C /usr/src/linux-headers-$KVER M=/build/gup_test CC=gcc-14 HOSTCC=gcc-14 CONFIG_DEBUG_INFO_BTF_MODULES= modules" \
        > "$CACHE/gup_test.log" 2>&1 || { tail -30 "$CACHE/gup_test.log" >&2; die "gup_test_oracle.ko did not build (log: $CACHE/gup_test.log)"; }
    cp "$ROOT/build/gup_test/gup_test_oracle.ko" "$OUT/"
    touch "$stamp"
}

build_selftests() {
    local stamp=$CACHE/stamps/hmm-tests-$KVER
    [ -f "$stamp" ] && return 0
    say "building hmm-tests (static) from tools/testing/selftests/mm of the same source"
    rm -rf "$ROOT/build/src" && mkdir -p "$ROOT/build"
    cp -a "$CACHE/src" "$ROOT/build/src"
    local mm=/build/src/tools/testing/selftests/mm
    in_root "cd $mm && gcc-14 -static -O2 -Wall -U_FORTIFY_SOURCE -I /build/src -I /build/src/tools/testing/selftests \
        -isystem /build/src/tools/include/uapi -o /build/hmm-tests hmm-tests.c vm_util.c hugepage_settings.c -lrt -lpthread -lm" \
        > "$CACHE/hmm-tests.log" 2>&1 || { tail -30 "$CACHE/hmm-tests.log" >&2; die "hmm-tests did not build (log: $CACHE/hmm-tests.log)"; }
    cp "$ROOT/build/hmm-tests" "$OUT/"
    touch "$stamp"
}

build_host_oracle() {
    # Sources/HostOracle/main.c, the kernel side of swift-hmm's host differential test, so that
    # the same command stream can be played on Linux 7.2 (see host-diff).
    local src=$REPO/Sources/HostOracle/main.c
    [ -f "$src" ] || return 0
    local sum; sum=$(sha256sum < "$src" | cut -c1-16)
    [ -f "$CACHE/stamps/host-oracle-$sum" ] && return 0
    say "building hmm-host-oracle (static) from Sources/HostOracle/main.c"
    mkdir -p "$ROOT/build/host-oracle" && cp "$src" "$ROOT/build/host-oracle/main.c"
    in_root "cd /build/host-oracle && gcc-14 -static -O2 -Wall -o /build/hmm-host-oracle main.c" \
        > "$CACHE/host-oracle.log" 2>&1 || { tail -30 "$CACHE/host-oracle.log" >&2; die "hmm-host-oracle did not build (log: $CACHE/host-oracle.log)"; }
    cp "$ROOT/build/hmm-host-oracle" "$OUT/"
    rm -f "$CACHE"/stamps/host-oracle-*; touch "$CACHE/stamps/host-oracle-$sum"
}

build_runner() {
    # swift-hmm's native scenario runner, if the tree has one (built in the trixie root, static).
    local src=$REPO/tools/kernel-oracle/runner
    [ -d "$src" ] || return 0
    local sum; sum=$(find "$src" -name '*.[ch]' | sort | xargs cat | sha256sum | cut -c1-16)
    [ -f "$CACHE/stamps/runner-$sum" ] && return 0
    say "building hmm-oracle-runner (static)"
    rm -rf "$ROOT/build/runner" && cp -a "$src" "$ROOT/build/runner" && cp "$CACHE/src/lib/test_hmm_uapi.h" "$ROOT/build/runner/"
    in_root "cd /build/runner && gcc-14 -static -O2 -Wall -DHAVE_KERNEL_UAPI -o /build/hmm-oracle-runner *.c -lpthread" \
        > "$CACHE/runner.log" 2>&1 || { tail -30 "$CACHE/runner.log" >&2; die "hmm-oracle-runner did not build (log: $CACHE/runner.log)"; }
    cp "$ROOT/build/hmm-oracle-runner" "$OUT/"
    rm -f "$CACHE"/stamps/runner-* "$CACHE/stamps/initramfs"; touch "$CACHE/stamps/runner-$sum"
}

make_initramfs() {
    local stamp=$CACHE/stamps/initramfs
    if [ -f "$stamp" ] && [ "$stamp" -nt "$HERE/init" ]; then
        local f newer=0
        for f in "$OUT"/*.ko "$OUT"/hmm-tests "$OUT"/hmm-host-oracle "$OUT"/hmm-oracle-runner; do [ -f "$f" ] && [ "$f" -nt "$stamp" ] && newer=1; done
        [ $newer = 0 ] && return 0
    fi
    say "making the busybox initramfs"
    local d=$CACHE/initramfs; rm -rf "$d"; mkdir -p "$d"/{bin,sbin,proc,sys,dev,tmp,oracle,lib,mnt/huge}
    cp /bin/busybox "$d/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$d/bin/$a"; done
    cp "$HERE/init" "$d/init" && chmod +x "$d/init"
    cp "$OUT/test_hmm.ko" "$OUT/gup_test_oracle.ko" "$d/lib/"
    for f in zram.ko lz4hc_compress.ko; do [ -f "$OUT/$f" ] && cp "$OUT/$f" "$d/lib/"; done
    cp "$OUT/hmm-tests" "$d/bin/"
    [ -f "$OUT/hmm-host-oracle" ] && cp "$OUT/hmm-host-oracle" "$d/bin/"
    [ -f "$OUT/hmm-oracle-runner" ] && cp "$OUT/hmm-oracle-runner" "$d/bin/"
    (cd "$d" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT/initramfs.cpio.gz")
    touch "$stamp"
}

prepare() {
    local t0=$SECONDS
    need_host_tools
    mkdir -p "$CACHE/stamps" "$OUT"
    fetch_packages
    make_root
    unpack_sources
    build_module
    build_selftests
    build_host_oracle
    build_runner
    fetch_zram
    make_initramfs
    say "ready in $((SECONDS - t0)) s: $OUT (kernel $KVER)"
}

status() {
    local ok=1
    for f in vmlinuz test_hmm.ko hmm-tests initramfs.cpio.gz; do
        if [ -f "$OUT/$f" ]; then echo "have    $f"; else echo "missing $f"; ok=0; fi
    done
    if [ -f "$OUT/hmm-oracle-runner" ]; then echo "have    hmm-oracle-runner"; else echo "missing hmm-oracle-runner"; fi
    command -v qemu-system-x86_64 >/dev/null && echo "have    qemu-system-x86_64" || { echo "missing qemu-system-x86_64"; ok=0; }
    echo "cache   $CACHE"; echo "kernel  $KVER"
    [ $ok = 1 ]
}

# --- running ----------------------------------------------------------------------------------
run_vm() {
    local timeout=900 coherent=0 files=() dirs=() mem_opt=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --file) files+=("$2"); shift 2 ;;
            --dir) dirs+=("$2"); shift 2 ;;
            --timeout) timeout=$2; shift 2 ;;
            --coherent) coherent=1; shift ;;
            --mem) mem_opt=$2; shift 2 ;;
            --) shift; break ;;
            *) break ;;
        esac
    done
    [ $# -gt 0 ] || die "run: no command given (oracle.sh run -- CMD...)"
    for f in vmlinuz initramfs.cpio.gz; do [ -f "$OUT/$f" ] || die "missing $OUT/$f — run: $0 prepare"; done
    # A changed runner or init is rebuilt into the initramfs (each a no-op when up to date).
    [ -d "$ROOT/build" ] && build_runner
    make_initramfs
    local w; w=$(mktemp -d "${TMPDIR:-/tmp}/hmm-oracle.XXXXXX")
    mkdir -p "$w/extra/oracle"
    printf '%s\n' "$*" > "$w/extra/oracle/cmd"
    local insmod_args="" append="console=ttyS0 loglevel=4 panic=-1 oops=panic"
    local mem=${mem_opt:-3072}
    case "$mem" in *[!0-9]*|"") die "--mem $mem: not a number of MiB" ;; esac
    if [ $coherent = 1 ]; then
        # Special-purpose memory for the coherent devices: reserve 4 GiB–4.5 GiB (no longer System
        # RAM) and hand two 256 MiB halves to test_hmm (kernel-oracle-notes.md).
        mem=5120; append="$append memmap=512M\$0x100000000"
        insmod_args="spm_addr_dev0=0x100000000 spm_addr_dev1=0x110000000"
    fi
    printf '%s\n' "$insmod_args" > "$w/extra/oracle/insmod-args"
    local f
    for f in ${files[@]+"${files[@]}"}; do
        local host=${f%%:*} guest=${f#*:}; [ "$guest" = "$f" ] && guest=$(basename "$host")
        [ -f "$host" ] || die "--file $host: no such file"
        case "/$guest/" in */../*|//*) die "--file $f: the guest path must stay inside /oracle" ;; esac
        mkdir -p "$(dirname "$w/extra/oracle/$guest")"; cp "$host" "$w/extra/oracle/$guest"
    done
    # (Called as `run_vm … || status=$?`, so set -e is off in here: check each step.)
    for f in ${dirs[@]+"${dirs[@]}"}; do
        local host=${f%%:*} guest=${f#*:}; [ "$guest" = "$f" ] && guest=$(basename "$host")
        [ -d "$host" ] || die "--dir $host: no such directory"
        case "/$guest/" in */../*|//*) die "--dir $f: the guest path must stay inside /oracle" ;; esac
        mkdir -p "$w/extra/oracle/$guest" && cp -r "$host"/. "$w/extra/oracle/$guest/" || die "--dir $f: cannot copy"
    done
    (cd "$w/extra" && find . | cpio -o -H newc --quiet | gzip -1 > "$w/extra.cpio.gz") || die "cannot pack the command's files"
    cat "$OUT/initramfs.cpio.gz" "$w/extra.cpio.gz" > "$w/initramfs.cpio.gz" || die "cannot write the initramfs"
    local status attempt
    for attempt in 1 2 3; do
        status=0
        timeout "$timeout" qemu-system-x86_64 -accel tcg -cpu max -m "$mem" -smp 2 -nographic -no-reboot \
            -kernel "$OUT/vmlinuz" -initrd "$w/initramfs.cpio.gz" -append "$append" \
            -serial "file:$w/console" -serial "file:$w/out" -monitor none </dev/null >/dev/null 2>"$w/qemu.err" || status=$?
        # Under TCG the kernel sometimes oopses while booting ("Oops: int3" as it patches its
        # text, before init runs): nothing reached the command's port. Boot again.
        [ -s "$w/out" ] || [ $status = 124 ] || ! grep -q "Kernel panic" "$w/console" 2>/dev/null || [ $attempt = 3 ] && break
        say "the kernel panicked before the command printed anything (attempt $attempt: $(grep -m1 -oE 'Oops: [^[]*|BUG: .*' "$w/console" | head -1)); booting again"
    done
    cp "$w/console" "$CACHE/last-console.log" 2>/dev/null || true
    tr -d '\r' < "$w/out" > "$w/out.txt" 2>/dev/null || : > "$w/out.txt"
    local rc; rc=$(sed -n 's/^@@ORACLE-EXIT \([0-9]*\)$/\1/p' "$w/out.txt" | tail -1)
    # The output without the marker and the newline init put before it.
    sed '/^@@ORACLE-EXIT /,$d' "$w/out.txt" | sed '${/^$/d;}'
    if grep -q "^@@ORACLE-DMESG " "$w/out.txt"; then
        say "the kernel log has warnings (console: $CACHE/last-console.log; 'dmesg' inside the VM for all of it):"
        sed -n 's/^@@ORACLE-DMESG \[ *[0-9.]*\] /  /p' "$w/out.txt" | sort | uniq -c | sort -rn | head -10 >&2
    elif grep -qE "BUG:|Oops:|WARNING:|Kernel panic" "$w/console" 2>/dev/null; then
        say "the kernel log has a BUG/Oops/WARNING (console: $CACHE/last-console.log):"
        grep -E "BUG:|Oops:|WARNING:|Kernel panic" "$w/console" | head -5 >&2
    fi
    if [ -z "$rc" ]; then
        cat "$w/qemu.err" >&2
        rm -rf "$w"
        if [ $status = 124 ]; then say "timed out after ${timeout} s (console: $CACHE/last-console.log)"; return 124; fi
        say "the VM ended without the command's exit status (qemu $status; console: $CACHE/last-console.log)"
        return 3
    fi
    rm -rf "$w"
    return "$rc"
}

# The cases of hmm-tests.c, FIXTURE.VARIANT.TEST: tests in the order declared, each with every
# variant of its fixture (the harness itself runs fixture by fixture, then variant by variant;
# each case runs alone here, so the order does not matter).
selftest_cases() {
    local src=$CACHE/src/tools/testing/selftests/mm/hmm-tests.c
    [ -f "$src" ] || die "missing $src — run: $0 prepare"
    awk '
        /^FIXTURE_VARIANT_ADD\(/ { sub(/^FIXTURE_VARIANT_ADD\(/, ""); sub(/\).*/, ""); split($0, a, /, */); v[a[1]] = v[a[1]] " " a[2] }
        /^TEST_F(_TIMEOUT)?\(/ { sub(/^TEST_F(_TIMEOUT)?\(/, ""); sub(/\).*/, ""); split($0, a, /, */); t[++n] = a[1] " " a[2] }
        END { for (i = 1; i <= n; i++) { split(t[i], ft, " "); m = split(v[ft[1]], vs, " ");
              for (j = 1; j <= m; j++) print ft[1] "." vs[j] "." ft[2] } }' "$src"
}

selftests() {
    local coherent=() only=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --coherent) coherent=(--coherent); shift ;;
            --filter) only=$2; shift 2 ;;
            *) die "selftests: unknown option $1 (options: --coherent, --filter TEXT)" ;;
        esac
    done
    local w; w=$(mktemp -d "${TMPDIR:-/tmp}/hmm-oracle-cases.XXXXXX")
    # Without special-purpose memory the coherent variants can only skip: leave them out.
    selftest_cases | { if [ ${#coherent[@]} -eq 0 ]; then grep -v _coherent || true; else cat; fi; } \
        | { if [ -n "$only" ]; then grep -F -- "$only" || true; else cat; fi; } > "$w/cases"
    if [ ! -s "$w/cases" ]; then
        rm -rf "$w"
        local hint=""; [ ${#coherent[@]} -eq 0 ] && hint=" (the coherent cases need --coherent)"
        die "selftests: no case matches${only:+ '$only'}$hint"
    fi
    # Each case in turn (the harness's -r), timed with /proc/uptime's centiseconds.
    local status=0
    run_vm "${coherent[@]}" --timeout 3600 --file "$w/cases:cases" -- '
        while read c; do
            t0=$(cut -d" " -f1 /proc/uptime)
            hmm-tests -r "$c" > /tmp/case.out 2>&1; rc=$?
            t1=$(cut -d" " -f1 /proc/uptime)
            cat /tmp/case.out
            printf "\n@@CASE %s %s %s %s\n" "$c" "$rc" "$t0" "$t1"
        done < cases
        echo "@@KERNEL $(uname -r)"' || status=$?
    rm -rf "$w"
    return $status
}

# The host differential's commands (recorded by HostDifferentialTests with
# HMM_HOST_DIFF_RECORD=FILE) played by hmm-host-oracle on the kernel; prints a header line
# ("# kernel RELEASE seed S operations N", from HMM_HOST_DIFF_SEED/OPS) and its results.
host_diff() {
    local cmds=${1:-}; [ -f "$cmds" ] || die "host-diff: give the commands file (HostDifferentialTests with HMM_HOST_DIFF_RECORD=FILE)"
    [ -f "$OUT/hmm-host-oracle" ] || die "missing $OUT/hmm-host-oracle — run: $0 prepare"
    run_vm --timeout 1800 --file "$cmds:cmds" -- '
        echo "# kernel $(uname -r) seed '"${HMM_HOST_DIFF_SEED:-9}"' operations '"${HMM_HOST_DIFF_OPS:-100000}"'"
        hmm-host-oracle 0x500000000000 0x40000000 < cmds'
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    host-diff) shift; host_diff "$@" ;;
    status) status ;;
    run) shift; run_vm "$@" ;;
    selftests) shift; selftests "$@" ;;
    clean) rm -rf "$CACHE"; say "removed $CACHE" ;;
    *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
