import Devices
import MMCore
import MMSync
import NativeBaselines

extension BenchSuite {
    /// The SVM device's figures (issue 16): how fast its fault path services faults, in wall
    /// time, against the same protocol in C; and the policy comparisons the issue asks for, in
    /// virtual time (the device's cost table), so they do not move with the machine's load.
    func svmFigures() throws -> [BenchRow] {
        let pages = quick ? 512 : 4096
        // Fault service: 4 engines read one word of every page of a populated region, under
        // first touch: each distinct fault is a migration of one page into device memory and
        // its mapping. Against its limit: the same protocol in C (4 clients, a locked queue,
        // batches of up to 256, a 4 KiB copy each, the wake-ups), measured in alternation.
        // Faults serviced per wall second.
        let (service, limit) = try measurePair(reps, { () throws -> Double in
            let m = try Machine(memoryBytes: UInt64(pages) * pageSize * 2 + (64 << 20), devicePfnSpaceBytes: 1 << 30, populateRAM: true)
            let p = try MMCore.Process(machine: m)
            let cpu = p.makeCPU()
            let d = try SVMDevice(machine: m, capacityBytes: UInt64(pages) * pageSize + (2 << 20), policy: SVMFirstTouchPolicy())
            defer { try? d.shutdown(); cpu.detach(); p.exit() }
            let space = try d.bind(p.mm)
            let a = try p.mmap(length: UInt64(pages) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
            try cpu.run { cpu in for i in 0..<UInt64(pages) { try cpu.store(a + i * pageSize, i) } }
            let t = try seconds { try d.launch(SVMWorkload.touch(base: a, pages: pages, write: false), on: space, engines: 4).wait() }
            let serviced = d.stats[.faults] - d.stats[.duplicates]
            guard d.stats[.migratedToDevice] == pages, serviced >= pages else {
                throw BenchError(description: "SVM touch migrated \(d.stats[.migratedToDevice]) of \(pages) pages in \(serviced) faults")
            }
            return Double(serviced) / t
        }, { () throws -> Double in
            let ns = nb_fault_service_ns(pages, 4)
            guard ns > 0 else { throw BenchError(description: "the C fault protocol failed") }
            return 1e9 / ns
        })
        // Policies, virtual time: the stream under density prefetch vs first touch; ping-pong
        // under remote mapping vs first touch. Each run checks every word.
        func virtualMs(_ kind: SVMWorkloadKind, _ policy: String) throws -> Double {
            let r = try SVMRunner.run(kind, policy: SVMRunner.policy(named: policy)!, pages: pages / 2, engines: 4, rounds: 4,
                                      machineMiB: 128, deviceMiB: 64)
            guard r.mismatches == 0, r.invariantProblems.isEmpty else {
                throw BenchError(description: "SVM \(kind) under \(policy): \(r.mismatches) words wrong, \(r.invariantProblems.prefix(2))")
            }
            return Double(r.virtualNanoseconds) / 1e6
        }
        let label = "\(pages / 512) MiB"
        let (prefetch, firstTouch) = try measurePair(max(1, reps / 2), { try virtualMs(.stream, "density-prefetch") },
                                                     { try virtualMs(.stream, "first-touch") })
        let (remote, migrate) = try measurePair(max(1, reps / 2), { try virtualMs(.pingpong, "remote-map") },
                                                { try virtualMs(.pingpong, "first-touch") })
        return [
            BenchRow(name: "SVM faults serviced (first-touch, 4 engines) vs the fault protocol in C", unit: "faults/s",
                     value: service.median, baseline: limit.median, spread: (service.min, service.max), kind: .rate, target: 0.33),
            BenchRow(name: "SVM stream of \(label), density prefetch vs first touch (virtual time)", unit: "ms",
                     value: prefetch.median, baseline: firstTouch.median, spread: (prefetch.min, prefetch.max), kind: .time, target: 1),
            BenchRow(name: "SVM ping-pong of \(label) x4, remote map vs first touch (virtual time)", unit: "ms",
                     value: remote.median, baseline: migrate.median, spread: (remote.min, remote.max), kind: .time, target: 1),
        ]
    }
}
