import Devices
import MMCore
import MMSync

extension BenchSuite {
    /// The ODP NIC (issue 17): RDMA WRITE of 256 MiB between two processes' regions, to a cold
    /// ODP region (every page of both sides faulted in by the NIC) and to a warm one (every
    /// translation present), each against the same WRITE between pinned regions (registered,
    /// untimed, with `pin_user_pages` long-term). Bytes per second.
    func odpFigures() throws -> [BenchRow] {
        let bytes: UInt64 = quick ? 16 << 20 : 256 << 20
        let m = try Machine(memoryBytes: 2 * bytes + bytes / 16 + (64 << 20), devicePfnSpaceBytes: 1 << 30, populateRAM: true)
        let nic = ODPDevice(machine: m)
        let qp = ODPQueuePair(device: nic)
        defer { qp.destroy() }
        var processes: [(MMCore.Process, CPU, UInt64)] = []
        for seed in [UInt64(1), 2] {
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            let a = try p.mmap(length: bytes, prot: .readWrite, flags: [.private, .anonymous])
            try cpu.run { cpu in
                var off: UInt64 = 0
                while off < bytes { try cpu.store(a + off, off &+ seed); off += pageSize }
            }
            processes.append((p, cpu, a))
        }
        defer { for (p, cpu, _) in processes { cpu.detach(); p.exit() } }
        let (pa, _, src) = processes[0], (pb, cpuB, dst) = processes[1]
        // Words checked after each WRITE (first, middle and last pages), overwritten before it.
        let probes: [UInt64] = [0, bytes / 2, bytes - pageSize]
        func write(_ from: ODPMemoryRegion, _ to: ODPMemoryRegion) throws -> Double {
            for o in probes { try cpuB.store(dst + o, UInt64.max) } // untimed; present writable pages: no invalidation
            let t = try seconds {
                try qp.post(.write(local: from, localAddress: src, remote: to, remoteAddress: dst, length: Int(bytes))).wait()
            }
            for o in probes where try cpuB.load(dst + o, as: UInt64.self) != o + 1 {
                throw BenchError(description: "the RDMA WRITE did not land at offset \(o)")
            }
            return Double(bytes) / t / 1e9
        }
        func regions(pinned: Bool) throws -> (ODPMemoryRegion, ODPMemoryRegion) {
            (try nic.register(pa.mm, address: src, length: bytes, access: .all, pinned: pinned),
             try nic.register(pb.mm, address: dst, length: bytes, access: .all, pinned: pinned))
        }
        var cold: [Double] = [], warm: [Double] = [], pinned: [Double] = []
        for _ in 0..<reps {
            let (a, b) = try regions(pinned: false)
            let faults = nic.stats[.pageFaults]
            cold.append(try write(a, b))
            guard nic.stats[.pageFaults] - faults == 2 * Int(bytes >> pageShift) else {
                throw BenchError(description: "a cold ODP WRITE faulted \(nic.stats[.pageFaults] - faults) pages")
            }
            warm.append(try write(a, b))
            a.deregister(); b.deregister()
            let (pa2, pb2) = try regions(pinned: true)
            pinned.append(try write(pa2, pb2))
            pa2.deregister(); pb2.deregister()
        }
        let c = spread(cold), w = spread(warm), p = spread(pinned)
        let label = "\(bytes >> 20)MiB"
        return [
            BenchRow(name: "ODP RDMA WRITE of \(label), cold (NIC page faults) vs pinned", unit: "GB/s",
                     value: c.median, baseline: p.median, spread: (c.min, c.max), kind: .rate, target: 0.5),
            BenchRow(name: "ODP RDMA WRITE of \(label), warm vs pinned", unit: "GB/s",
                     value: w.median, baseline: p.median, spread: (w.min, w.max), kind: .rate, target: 0.9),
        ]
    }
}
