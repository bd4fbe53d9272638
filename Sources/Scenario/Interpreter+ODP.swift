import Devices
import MMCore

/// The ODP NIC's commands (docs/odp.md): `odp_open`, `odp_reg`, `odp_dereg`, `rdma_write`,
/// `rdma_read`, `odp_stats`. A work request's error is its outcome, compared with `expect` as a
/// system call's is.
extension ScenarioInterpreter {
    func nic(_ t: Token, _ ctx: Context) throws -> (nic: ODPDevice, qp: ODPQueuePair) { try named(t, ctx, .nic, \.nics) }

    func memoryRegion(_ t: Token, _ ctx: Context) throws -> ODPMemoryRegion { try named(t, ctx, .mr, \.mrs) }

    /// `odp_open -> NIC`; `odp_reg NIC ADDR LEN [pinned] [read_only] [proc=P] -> MR` (every
    /// access, or remote reads only) or `odp_reg_implicit NIC [read_only] [proc=P] -> MR` (the
    /// whole address space);
    /// `odp_dereg MR`; `rdma_write NIC LMR LADDR RMR RADDR LEN` and `rdma_read …`, `rdma_fadd
    /// NIC MR ADDR DELTA` and `rdma_cswap NIC MR ADDR EXPECTED NEW` (`expect old=N`; posted on
    /// the NIC's queue pair and waited for); `odp_stats NIC
    /// [expect page_faults=N …]` (the NIC's counters, and `mapped`: translations of every
    /// region it has).
    func odpCommand(_ cmd: Command, _ ctx: Context) throws {
        switch cmd.name.text {
        case "odp_open":
            guard let b = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the NIC") }
            let name = try resolveName(b, ctx)
            let m = try theMachine(at: cmd.name.location)
            let nic = ODPDevice(machine: m)
            let qp = ODPQueuePair(device: nic)
            let old = state.withLock { () -> ODPQueuePair? in let o = nics[name]?.qp; nics[name] = (nic, qp); return o }
            old?.destroy()
            trace(cmd, ctx, "ok")
        case "odp_reg", "odp_reg_implicit":
            guard let b = cmd.bind else { throw cmd.fail("expected '-> NAME' to name the memory region") }
            let name = try resolveName(b, ctx)
            let (nic, _) = try self.nic(try cmd.arg(0, "an ODP NIC"), ctx)
            // Implicit: the whole address space (address 0, length UInt64.max).
            let implicit = cmd.name.text == "odp_reg_implicit"
            let a = implicit ? 0 : try eval(try cmd.arg(1, "an address"), ctx)
            let len = implicit ? UInt64.max : try eval(try cmd.arg(2, "a length"), ctx)
            let proc = try process(for: cmd, ctx)
            let access: ODPAccess = cmd.flag("read_only") ? [.remoteRead] : .all
            try syscall(cmd, ctx, { () throws -> ODPMemoryRegion in
                try nic.register(proc.mm, address: a, length: len, access: access, pinned: cmd.flag("pinned"))
            }) { r in
                let old = state.withLock { () -> ODPMemoryRegion? in let o = mrs[name]; mrs[name] = r; return o }
                old?.deregister()
                return "mr (\(r.pinned ? "pinned" : r.implicit ? "implicit odp" : "odp"))"
            }
        case "odp_dereg":
            let t = try cmd.arg(0, "a memory region")
            let r = try memoryRegion(t, ctx)
            let n = try resolveName(t, ctx)
            state.withLock { mrs[n] = nil }
            r.deregister()
            trace(cmd, ctx, "ok")
        case "rdma_write", "rdma_read":
            let (_, qp) = try nic(try cmd.arg(0, "an ODP NIC"), ctx)
            let local = try memoryRegion(try cmd.arg(1, "a local memory region"), ctx)
            let la = try eval(try cmd.arg(2, "a local address"), ctx)
            let remote = try memoryRegion(try cmd.arg(3, "a remote memory region"), ctx)
            let ra = try eval(try cmd.arg(4, "a remote address"), ctx)
            let len = try eval(try cmd.arg(5, "a length"), ctx)
            guard len <= ScenarioInterpreter.maxAccessBytes else { throw cmd.fail("expected a length of at most 256MiB") }
            let r: ODPWorkRequest = cmd.name.text == "rdma_write"
                ? .write(local: local, localAddress: la, remote: remote, remoteAddress: ra, length: Int(len))
                : .read(local: local, localAddress: la, remote: remote, remoteAddress: ra, length: Int(len))
            try syscall(cmd, ctx, { () throws -> UInt64 in try qp.post(r).wait() }) { _ in "ok" }
        case "rdma_fadd", "rdma_cswap":
            let (_, qp) = try nic(try cmd.arg(0, "an ODP NIC"), ctx)
            let mr = try memoryRegion(try cmd.arg(1, "a memory region"), ctx)
            let a = try eval(try cmd.arg(2, "an address"), ctx)
            let r: ODPWorkRequest = cmd.name.text == "rdma_fadd"
                ? .fetchAdd(remote: mr, address: a, add: try eval(try cmd.arg(3, "a delta"), ctx))
                : .compareSwap(remote: mr, address: a, compare: try eval(try cmd.arg(3, "the expected value"), ctx),
                               swap: try eval(try cmd.arg(4, "the new value"), ctx))
            var old: UInt64?
            try syscall(cmd, ctx, { () throws -> UInt64 in try qp.post(r).wait() }) { v in old = v; return "old \(v)" }
            if let want = cmd.expectation("old") {
                let w = try eval(want, ctx)
                guard let old else { throw failure(cmd, "expected old=\(w), got an error") }
                if old != w { throw failure(cmd, "expected old=\(w), got old=\(old)") }
            }
        default: // odp_stats
            let t = try cmd.arg(0, "an ODP NIC")
            let (nic, _) = try self.nic(t, ctx)
            let regions = state.withLock { mrs.values.filter { $0.device === nic } }
            var got = Dictionary(uniqueKeysWithValues: nic.stats.snapshot.map { ($0.0, UInt64($0.1)) })
            got["mapped"] = UInt64(regions.reduce(0) { $0 + $1.mappedPages })
            emit("odp_stats \(resolvedText(t, ctx)): " + got.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            try checkCounters(cmd, ctx, got)
        }
    }
}
