import XCTest
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

/// The GPU-like SVM device (issue 16): kernels over shared memory under each policy, checked
/// word by word against a reference model, with the device's counters exact where the
/// policy makes them so.
final class SVMTests: XCTestCase {
    final class Env {
        let machine: Machine
        let process: MMCore.Process
        let cpu: CPU
        let device: SVMDevice
        let space: SVMSpace
        let used: Int
        init(mib: UInt64 = 64, deviceMiB: UInt64 = 16, policy: SVMPolicy) throws {
            machine = try Machine(memoryBytes: mib << 20, devicePfnSpaceBytes: 1 << 30)
            used = machine.usedFrames
            process = try MMCore.Process(machine: machine)
            cpu = process.makeCPU()
            device = try SVMDevice(machine: machine, capacityBytes: deviceMiB << 20, policy: policy)
            space = try device.bind(process.mm)
        }
        func anon(_ pages: Int) throws -> UInt64 {
            try process.mmap(length: UInt64(pages) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        }
        /// Word i of the region holds `seed + i`.
        func fill(_ a: UInt64, words: Int, seed: UInt64) throws {
            for i in 0..<words { try cpu.store(a + UInt64(i) * 8, seed &+ UInt64(i)) }
        }
        /// `pages` new pages filled with `seed + i` and a stream launched over them.
        func startStream(pages: Int, seed: UInt64, engines: Int = 4) throws -> (a: UInt64, words: Int, run: SVMLaunch) {
            let a = try anon(pages), words = pages * 512
            try fill(a, words: words, seed: seed)
            return (a, words, try device.launch(SVMWorkload.stream(base: a, words: words), on: space, engines: engines))
        }
        /// Every word of [a, a + words × 8) is its old value (`seed + i`) or the stream's new one
        /// (a kernel stopped part-way). Return: the number of words that are neither.
        func wordsNeitherOldNorNew(_ a: UInt64, words: Int, seed: UInt64, cpu: CPU? = nil) throws -> Int {
            var bad = 0
            for i in 0..<words {
                let got = try (cpu ?? self.cpu).load(a + UInt64(i) * 8, as: UInt64.self), old = seed &+ UInt64(i)
                if got != old && got != SVMWorkload.stream(old) { bad += 1 }
            }
            return bad
        }
        func finish(file: StaticString = #filePath, line: UInt = #line) throws {
            device.waitIdle()
            XCTAssertEqual(space.checkInvariants(), [], file: file, line: line)
            XCTAssertEqual(machine.checkInvariants(), [], file: file, line: line)
            try device.shutdown()
            XCTAssertEqual(device.freePages, device.capacityPages, "device pages leaked", file: file, line: line)
            cpu.detach()
            process.exit()
            XCTAssertEqual(machine.checkInvariants(), [], file: file, line: line)
            XCTAssertEqual(machine.usedFrames - used, 0, "frames leaked", file: file, line: line)
        }
    }

    /// Stream over 2 MiB on 4 engines: every word right afterwards, read by the CPU, under each
    /// policy. First touch moves each page once (512 pages, 2 MiB over the link) and the
    /// CPU's reads bring each back; remote mapping moves nothing; density prefetch moves whole
    /// 2 MiB regions.
    func testStreamUnderEachPolicyMatchesTheReference() throws {
        let pages = 512, words = pages * 512
        for policy in [SVMFirstTouchPolicy(), SVMRemoteMapPolicy(), SVMDensityPrefetchPolicy()] as [SVMPolicy] {
            let env = try Env(policy: policy)
            let a = try env.anon(pages)
            try env.fill(a, words: words, seed: 7)
            let run = try env.device.launch(SVMWorkload.stream(base: a, words: words), on: env.space, engines: 4)
            let t = try run.wait()
            XCTAssertEqual(env.space.checkInvariants(), [], policy.name)
            let s = env.device.stats
            switch policy.name {
            case "remote-map":
                XCTAssertEqual(s[.migratedToDevice], 0)
                XCTAssertEqual(env.space.localPages, 0)
                XCTAssertEqual(env.space.mappedPages, pages)
                XCTAssertEqual(run.localAccesses, 0)
                XCTAssertEqual(run.remoteAccesses, 2 * words)
            default:
                XCTAssertEqual(s[.migratedToDevice], pages, policy.name)
                XCTAssertEqual(s[.bytesToDevice], pages * Int(pageSize), policy.name)
                XCTAssertEqual(env.device.capacityPages - env.device.freePages, pages, policy.name) // resident
                // First touch maps every page as it moves; the prefetch's region migration
                // drops the device's entries mapped before it (its MIGRATE invalidation).
                if policy.name == "first-touch" { XCTAssertEqual(env.space.localPages, pages) }
                XCTAssertEqual(run.remoteAccesses, 0, policy.name)
                XCTAssertEqual(run.localAccesses, 2 * words, policy.name)
            }
            XCTAssertEqual(s[.faults], run.faultsRaised, policy.name)
            XCTAssertGreaterThan(t.virtualNanoseconds, 0)
            for i in 0..<words {
                let got = try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self)
                if got != SVMWorkload.stream(7 &+ UInt64(i)) { XCTFail("\(policy.name): word \(i) = \(got)"); break }
            }
            XCTAssertEqual(s[.cpuFaultsBack], policy.name == "remote-map" ? 0 : pages, policy.name)
            XCTAssertEqual(env.space.localPages, 0, policy.name)
            try env.finish()
        }
    }

    /// Density prefetch: touching the first 300 pages of a 2 MiB region in order, one kernel
    /// per page, faults at 17 pages: 0, 1, 2, 4, 8, 16, 32, 64, 65, 128, 129, 130, 256, 257,
    /// 258, 260, 264. At each, every node holding the page that is more than 51 % marked
    /// (counted before this fault's prefetch) has its unmarked rest migrated and mapped; at
    /// 264 the whole region qualifies (265 of 512), so the other touches hit. First touch
    /// faults and migrates the 300 touched pages one by one.
    func testDensityPrefetchMigratesTheWholeRegionPastItsThreshold() throws {
        for (policy, moved, faults) in [(SVMDensityPrefetchPolicy() as SVMPolicy, 512, 17), (SVMFirstTouchPolicy(), 300, 300)] {
            let env = try Env(policy: policy)
            let a = try env.anon(1024) // two 2 MiB regions at most; the first aligned one is used
            let region = (a + pmdSize - 1) & pmdMask
            for p in 0..<300 {
                let run = try env.device.launch(SVMWorkload.touch(base: region + UInt64(p) * pageSize, pages: 1, write: false),
                                                on: env.space, engines: 1)
                try run.wait()
            }
            XCTAssertEqual(env.device.stats[.migratedToDevice], moved, policy.name)
            XCTAssertEqual(env.device.stats[.faults], faults, policy.name)
            XCTAssertEqual(env.device.stats[.batches], faults, policy.name)
            try env.finish()
        }
    }

    /// A counter shared by four engines' atomics and two CPU threads' atomic adds, the two
    /// sides made to meet: the engines add, then wait for a flag; the CPU threads wait to see
    /// the engines' first adds (their loads take the page from the device), set the flag and
    /// add while the engines add again. The final value is exact under both placements, and
    /// the page changed hands: under first touch it went back to system memory and to the
    /// device again; under remote mapping the device took it exclusive twice.
    func testAtomicCounterSharedWithCPUAtomicsIsExact() throws {
        for policy in [SVMFirstTouchPolicy(), SVMRemoteMapPolicy()] as [SVMPolicy] {
            let env = try Env(policy: policy)
            let a = try env.anon(2)
            let flag = a + pageSize
            try env.cpu.store(a, UInt64(1000))
            let engines = 4, deviceAdds = 1500, cpuAdds = 2000
            let kernel = SVMKernel(name: "counter-meet") { (e: SVMEngine) throws(SVMFatalFault) in
                for _ in 0..<deviceAdds { try e.atomicAdd(a, 1) }
                while try e.load(flag) == 0 {}
                for _ in 0..<deviceAdds { try e.atomicAdd(a, 1) }
            }
            let run = try env.device.launch(kernel, on: env.space, engines: engines)
            let cpus = (0..<2).map { _ in env.process.makeCPU() }
            let firstHalf = UInt64(1000 + engines * deviceAdds)
            let threads = cpus.enumerated().map { (k, c) in
                ModelThread.spawn(name: "cpu-adds") {
                    while (try! c.load(a, as: UInt64.self)) < firstHalf { syncSleep(nanoseconds: 50_000) }
                    if k == 0 { try! c.store(flag, UInt64(1)) }
                    for _ in 0..<cpuAdds { _ = try! c.fetchAdd(a, 1) }
                }
            }
            try run.wait(timeoutNanoseconds: 120_000_000_000)
            threads.forEach { $0.join() }
            cpus.forEach { $0.detach() }
            XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), UInt64(1000 + 2 * engines * deviceAdds + 2 * cpuAdds), policy.name)
            let s = env.device.stats
            if policy.name == "remote-map" {
                XCTAssertGreaterThanOrEqual(s[.exclusiveGrabs], 2)
                XCTAssertEqual(s[.migratedToDevice], 0)
            } else {
                XCTAssertGreaterThanOrEqual(s[.cpuFaultsBack], 1)
                XCTAssertGreaterThanOrEqual(s[.migratedToDevice], 3) // the counter twice, the flag once
            }
            try env.finish()
        }
    }

    /// A kernel that touches an address no VMA holds is cancelled with EFAULT at that address;
    /// a kernel running beside it finishes with every word right; a write to a read-only
    /// mapping is EPERM.
    func testAFatalFaultCancelsOnlyItsKernel() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let a = try env.anon(64)
        try env.fill(a, words: 64 * 512, seed: 1)
        let hole = try env.anon(4)
        try env.process.munmap(hole, length: 4 * pageSize)
        let good = try env.device.launch(SVMWorkload.stream(base: a, words: 64 * 512), on: env.space, engines: 2)
        let bad = try env.device.launch(SVMWorkload.touch(base: hole, pages: 4, write: false), on: env.space, engines: 1)
        XCTAssertThrowsError(try bad.wait()) { e in
            XCTAssertEqual(e as? SVMFatalFault, SVMFatalFault(address: hole, access: .read, errno: .EFAULT))
        }
        try good.wait()
        for i in 0..<(64 * 512) where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(1 &+ UInt64(i)) {
            XCTFail("word \(i)"); break
        }
        let ro = try env.process.mmap(length: pageSize, prot: .read, flags: [.private, .anonymous])
        let w = try env.device.launch(SVMWorkload.touch(base: ro, pages: 1, write: true, value: 5), on: env.space, engines: 1)
        XCTAssertThrowsError(try w.wait()) { e in XCTAssertEqual((e as? SVMFatalFault)?.errno, .EPERM) }
        XCTAssertEqual(env.device.stats[.fatalFaults], 2)
        XCTAssertEqual(try env.cpu.load(ro, as: UInt64.self), 0)
        try env.finish()
    }

    /// Three times the device's memory streamed under first touch: chunks are evicted to make
    /// room, every word comes back right, and nothing is left on the device after shutdown.
    func testOversubscriptionEvictsAndLosesNothing() throws {
        let env = try Env(deviceMiB: 2, policy: SVMFirstTouchPolicy())
        let pages = 3 * 512, words = pages * 512
        let a = try env.anon(pages)
        try env.fill(a, words: words, seed: 99)
        try env.device.launch(SVMWorkload.stream(base: a, words: words), on: env.space, engines: 4).wait()
        XCTAssertGreaterThan(env.device.stats[.evictions], 0)
        XCTAssertLessThanOrEqual(env.space.localPages, 512)
        XCTAssertEqual(env.device.stats[.migratedToDevice] - env.device.stats[.migratedToSystem], env.space.localPages)
        for i in 0..<words where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(99 &+ UInt64(i)) {
            XCTFail("word \(i)"); break
        }
        try env.finish()
    }

    /// A fork while the device holds the pages: the child reads the parent's data (its CPU
    /// faults bring the pages back); a device write in the parent afterwards breaks the
    /// sharing; the child keeps the old values, the parent sees the new ones.
    func testForkWhileTheDeviceHoldsThePages() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let pages = 16
        let (a, words, first) = try env.startStream(pages: pages, seed: 3, engines: 2)
        try first.wait()
        XCTAssertEqual(env.space.localPages, pages)
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a + 8 * 100, as: UInt64.self), SVMWorkload.stream(3 + 100))
        try env.device.launch(SVMWorkload.stream(base: a, words: words), on: env.space, engines: 2).wait()
        for i in stride(from: 0, to: words, by: 97) {
            XCTAssertEqual(try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self), SVMWorkload.stream(SVMWorkload.stream(3 &+ UInt64(i))))
            XCTAssertEqual(try ccpu.load(a + UInt64(i) * 8, as: UInt64.self), SVMWorkload.stream(3 &+ UInt64(i)))
        }
        XCTAssertEqual(env.space.checkInvariants(), [])
        ccpu.detach()
        child.exit()
        try env.finish()
    }

    /// CPU threads write the second half of every page while the engines stream over the
    /// first half of the same pages; both halves are right afterwards, under each policy.
    func testCPUWritesDuringAKernelOnTheSamePages() throws {
        for policy in [SVMFirstTouchPolicy(), SVMRemoteMapPolicy(), SVMDensityPrefetchPolicy()] as [SVMPolicy] {
            let env = try Env(policy: policy)
            let pages = 256
            let a = try env.anon(pages)
            try env.fill(a, words: pages * 512, seed: 11)
            // The device's half: words 0..<256 of each page, as one stream per page.
            let kernel = SVMKernel(name: "half-stream") { (e: SVMEngine) throws(SVMFatalFault) in
                for p in stride(from: e.index, to: pages, by: e.count) {
                    for w in 0..<256 {
                        let addr = a + UInt64(p) * pageSize + UInt64(w) * 8
                        try e.store(addr, SVMWorkload.stream(try e.load(addr)))
                    }
                }
            }
            let run = try env.device.launch(kernel, on: env.space, engines: 4)
            defer { _ = try? run.wait(timeoutNanoseconds: 120_000_000_000) }
            let cpus = (0..<2).map { _ in env.process.makeCPU() }
            let threads = cpus.enumerated().map { (k, c) in
                ModelThread.spawn(name: "cpu-writer") {
                    for p in stride(from: k, to: pages, by: 2) {
                        for w in 256..<512 { try! c.store(a + UInt64(p) * pageSize + UInt64(w) * 8, UInt64(p * 512 + w) ^ 0xABCD) }
                    }
                }
            }
            try run.wait()
            threads.forEach { $0.join() }
            cpus.forEach { $0.detach() }
            for p in 0..<pages {
                for w in 0..<512 {
                    let i = p * 512 + w
                    let want = w < 256 ? SVMWorkload.stream(11 &+ UInt64(i)) : UInt64(i) ^ 0xABCD
                    let got = try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self)
                    if got != want { XCTFail("\(policy.name): page \(p) word \(w) = \(got), want \(want)"); return }
                }
            }
            try env.finish()
        }
    }

    /// Every workload under every policy through `SVMRunner`: every word right, the device's
    /// table in agreement with the CPU's, and the counts each policy implies. Ping-pong under
    /// first touch moves every page to the device and back in every round (3 × 256 each way);
    /// remote mapping moves none; thrashing detection pins each page after two round trips;
    /// the prefetch streams with far fewer faults than first touch.
    func testEveryWorkloadUnderEveryPolicyMatchesTheReference() throws {
        var results: [String: SVMRunResult] = [:]
        for kind in SVMWorkloadKind.allCases {
            for name in SVMRunner.policyNames {
                let r = try SVMRunner.run(kind, policy: SVMRunner.policy(named: name)!, pages: 256, engines: 4, rounds: 3,
                                          machineMiB: 64, deviceMiB: 16)
                XCTAssertEqual(r.mismatches, 0, "\(kind) \(name)")
                XCTAssertEqual(r.invariantProblems, [], "\(kind) \(name)")
                if name == "remote-map" { XCTAssertEqual(r.counter("migrated_to_device"), 0, "\(kind)") }
                results["\(kind.rawValue)/\(name)"] = r
            }
        }
        let pp = try XCTUnwrap(results["pingpong/first-touch"])
        XCTAssertEqual(pp.counter("migrated_to_device"), 3 * 256)
        XCTAssertEqual(pp.counter("migrated_to_system"), 3 * 256)
        XCTAssertEqual(pp.counter("cpu_faults_back"), 3 * 256)
        XCTAssertEqual(results["pingpong/remote-map"]?.counter("remote_maps"), 256)
        // Thrashing detection: two round trips per page, the third device fault pins it to
        // system memory (mapped remotely from then on).
        let th = try XCTUnwrap(results["pingpong/thrashing-aware"])
        XCTAssertEqual(th.counter("migrated_to_device"), 2 * 256)
        XCTAssertEqual(th.counter("migrated_to_system"), 2 * 256)
        XCTAssertEqual(th.counter("thrashing"), 256)
        XCTAssertEqual(th.counter("remote_maps"), 256)
        XCTAssertEqual(th.counter("faults") - th.counter("duplicates"), 3 * 256)
        let ft = try XCTUnwrap(results["stream/first-touch"]), pf = try XCTUnwrap(results["stream/density-prefetch"])
        XCTAssertEqual(ft.counter("migrated_to_device"), 256)
        XCTAssertEqual(pf.counter("migrated_to_device"), 256)
        let serviced = { (r: SVMRunResult) in r.counter("faults") - r.counter("duplicates") }
        XCTAssertGreaterThanOrEqual(serviced(ft), 256)
        XCTAssertLessThan(serviced(pf) * 4, serviced(ft), "prefetch \(serviced(pf)), first touch \(serviced(ft))")
        XCTAssertLessThan(pf.virtualNanoseconds, ft.virtualNanoseconds)
        XCTAssertLessThan(results["pingpong/remote-map"]!.virtualNanoseconds, pp.virtualNanoseconds)
    }

    /// Every workload under every policy with two CPU threads reading and writing the same
    /// pages while the kernels run (each thread's lane word of every page, and words the
    /// workload leaves unchanged): every word right, every lane exactly the increments made,
    /// every value a CPU thread read along the way right, and the tables in agreement.
    func testEveryWorkloadUnderEveryPolicyWithCPUThreadsBesideTheKernels() throws {
        var faultsBack = 0
        for kind in SVMWorkloadKind.allCases {
            for name in SVMRunner.policyNames {
                let r = try SVMRunner.run(kind, policy: SVMRunner.policy(named: name)!, pages: 256, engines: 4, rounds: 3,
                                          cpuThreads: 2, machineMiB: 64, deviceMiB: 16)
                XCTAssertEqual(r.mismatches, 0, "\(kind) \(name)")
                XCTAssertEqual(r.invariantProblems, [], "\(kind) \(name)")
                XCTAssertGreaterThanOrEqual(r.cpuPasses, 2, "\(kind) \(name)") // each thread at least once
                XCTAssertGreaterThanOrEqual(r.cpuAccesses, r.cpuPasses / 2 * 256, "\(kind) \(name)")
                if name == "remote-map" { XCTAssertEqual(r.counter("cpu_faults_back"), 0, "\(kind)") }
                faultsBack += r.counter("cpu_faults_back")
            }
        }
        // The threads did meet the device: pages it held came back to them mid-run.
        XCTAssertGreaterThan(faultsBack, 0)
    }

    /// Every workload at 1.5 and 3 times the device's memory (2 MiB) under first touch: chunks
    /// are evicted to make room (all but the counter, whose working set is one page) and every
    /// word comes back right. (`.ci/run` runs every policy so, with CPU threads, in release.)
    func testEveryWorkloadOversubscribedLosesNothing() throws {
        for kind in SVMWorkloadKind.allCases {
            for pages in [768, 1536] {
                for name in ["first-touch"] {
                    let r = try SVMRunner.run(kind, policy: SVMRunner.policy(named: name)!, pages: pages, engines: 4, rounds: 2,
                                              machineMiB: 64, deviceMiB: 2)
                    let what = "\(kind) \(name) \(pages) pages"
                    XCTAssertEqual(r.mismatches, 0, what)
                    XCTAssertEqual(r.invariantProblems, [], what)
                    if kind == .counter { XCTAssertEqual(r.counter("evictions"), 0, what) }
                    else { XCTAssertGreaterThan(r.counter("evictions"), 0, what) }
                    XCTAssertEqual(r.counter("bytes_to_system"), r.counter("migrated_to_system") * Int(pageSize), what)
                }
            }
        }
    }

    /// The engines' TLBs: a second kernel over 8 mapped pages, 64 reads of each in turn, walks
    /// the table once per page per engine and hits otherwise; a CPU write that takes a page
    /// back while a kernel holds it in its TLB shoots the TLB down, and the engine's next read
    /// faults and sees the CPU's value (a stale entry would read the freed device page).
    func testEngineTLBHitsAndIsShotDownByAnInvalidation() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let a = try env.anon(8)
        try env.fill(a, words: 8 * 512, seed: 1)
        try env.device.launch(SVMWorkload.touch(base: a, pages: 8, write: false), on: env.space, engines: 1).wait()
        XCTAssertEqual(env.space.localPages, 8)
        let reads = SVMKernel(name: "reads") { (e: SVMEngine) throws(SVMFatalFault) in
            for p in 0..<8 { for w in 0..<64 { _ = try e.load(a + UInt64(p) * pageSize + UInt64(w) * 8) } }
        }
        let run = try env.device.launch(reads, on: env.space, engines: 2)
        try run.wait()
        XCTAssertEqual(run.faultsRaised, 0)
        XCTAssertEqual(run.tlbMisses, 2 * 8)
        XCTAssertEqual(run.tlbHits, 2 * 8 * 63)
        XCTAssertEqual(run.tlbFlushes, 0)
        // Mid-kernel: the engine reads page 0 (into its TLB), waits for the CPU's write to it,
        // and reads it again.
        let step = AtomicCounter(0), seen = AtomicCounter(0)
        let waiter = SVMKernel(name: "waiter") { (e: SVMEngine) throws(SVMFatalFault) in
            _ = try e.load(a)
            step.store(1)
            let deadline = monotonicNanoseconds() + 60_000_000_000
            while step.load() != 2 && monotonicNanoseconds() < deadline {}
            seen.store(Int(truncatingIfNeeded: try e.load(a)))
        }
        let before = env.device.stats[.tlbFlushes]
        let w = try env.device.launch(waiter, on: env.space, engines: 1)
        let deadline = monotonicNanoseconds() + 60_000_000_000
        while step.load() != 1 && w.fatal == nil && monotonicNanoseconds() < deadline {}
        XCTAssertEqual(step.load(), 1, "the waiter kernel never read its page")
        try env.cpu.store(a, 777) // migrate_to_ram: the device's entry goes, the TLBs are shot down
        step.store(2)
        try w.wait(timeoutNanoseconds: 120_000_000_000)
        XCTAssertEqual(seen.load(), 777)
        XCTAssertEqual(w.tlbMisses, 2 + 1) // the first read, the read after the flush, its replay
        XCTAssertEqual(w.faultsRaised, 1)
        XCTAssertEqual(w.tlbFlushes, 1)
        XCTAssertEqual(env.device.stats[.tlbFlushes] - before, 1)
        try env.finish()
    }

    /// Cost overrides by name: applied all together, or (an unknown name, a value that is not
    /// a number, a link of no bandwidth) not at all.
    func testCostOverridesByName() throws {
        var c = SVMCosts()
        try c.apply(["tlb-miss-ns=300", "link-bytes-per-ns=32", "fault-batch-ns=0"])
        XCTAssertEqual(c.tlbMissNs, 300)
        XCTAssertEqual(c.linkBytesPerNs, 32)
        XCTAssertEqual(c.faultBatchNs, 0)
        XCTAssertEqual(c.copyNs(4096), 128)
        for bad in [["replay-ns=5", "no-such-ns=1"], ["replay-ns=-1"], ["replay-ns"], ["link-bytes-per-ns=0"], ["replay-ns=1e3"]] {
            var d = c
            XCTAssertThrowsError(try d.apply(bad)) { XCTAssertEqual($0 as? Errno, .EINVAL, "\(bad)") }
            XCTAssertEqual(d, c, "\(bad) changed a cost")
        }
        XCTAssertEqual(Set(SVMCosts.names.map(\.0)).count, 8)
    }

    /// The density prefetch asks the device's residency: after the CPU took pages 0..<300 of a
    /// region back, a kernel that reads them again faults at pages 0, 1, 2, 4, …, 64 and no
    /// more: there the whole region's node is past half (65 wanted + 212 resident of 512) and
    /// pages 64..<300 come at once. (A record of pages once marked would count them still
    /// there, never prefetch, and fault on each of the 300.)
    func testDensityPrefetchCountsPagesTheCPUTookBackAsGone() throws {
        let env = try Env(deviceMiB: 2, policy: SVMDensityPrefetchPolicy())
        let a = try env.anon(512)
        try env.fill(a, words: 512 * 512, seed: 5)
        try env.device.launch(SVMWorkload.touch(base: a, pages: 512, write: false), on: env.space, engines: 1).wait()
        XCTAssertEqual(env.space.localPages, 512)
        for p in 0..<300 { XCTAssertEqual(try env.cpu.load(a + UInt64(p) * pageSize, as: UInt64.self), 5 &+ UInt64(p * 512)) }
        XCTAssertEqual(env.device.stats[.cpuFaultsBack], 300)
        XCTAssertEqual(env.device.residency(env.space, a, a + 512 * pageSize), [Bool](repeating: false, count: 300) + [Bool](repeating: true, count: 212))
        let before = env.device.stats[.faults]
        let run = try env.device.launch(SVMWorkload.touch(base: a, pages: 300, write: false), on: env.space, engines: 1)
        try run.wait()
        XCTAssertEqual(env.device.stats[.faults] - before, 8)
        XCTAssertEqual(env.space.localPages, 512)
        try env.finish()
    }

    /// A prefetch never evicts: on a device with 2 pages free, a migration without eviction
    /// of 8 pages moves 2 (the rest stay in system memory, unmapped), and on a full device none;
    /// the group's own migration does evict.
    func testAPrefetchTakesOnlyFreeDeviceMemory() throws {
        let env = try Env(deviceMiB: 2, policy: SVMFirstTouchPolicy())
        let a = try env.anon(510), b = try env.anon(8)
        try env.fill(a, words: 510 * 512, seed: 1)
        try env.fill(b, words: 8 * 512, seed: 2)
        try env.device.launch(SVMWorkload.touch(base: a, pages: 510, write: false), on: env.space, engines: 2).wait()
        XCTAssertEqual(env.device.freePages, 2)
        XCTAssertEqual(env.device.migrateToDevice(env.space, b, b + 8 * pageSize, evict: false), 2)
        XCTAssertEqual(env.device.freePages, 0)
        XCTAssertEqual(env.device.migrateToDevice(env.space, b + 2 * pageSize, b + 8 * pageSize, evict: false), 0)
        XCTAssertEqual(env.device.stats[.evictions], 0)
        XCTAssertEqual(env.device.residency(env.space, b, b + 8 * pageSize), [true, true] + [Bool](repeating: false, count: 6))
        XCTAssertEqual(env.device.migrateToDevice(env.space, b + 2 * pageSize, b + 8 * pageSize), 6)
        XCTAssertEqual(env.device.stats[.evictions], 1)
        for i in stride(from: 0, to: 8 * 512, by: 101) { XCTAssertEqual(try env.cpu.load(b + UInt64(i) * 8, as: UInt64.self), 2 &+ UInt64(i)) }
        try env.finish()
    }

    /// Thrashing detection places each run of unpinned pages of a group on its own: pinned
    /// pages are left where they are (mapped remotely), the others migrate as the base
    /// policy says (one record for the group would send it all to a remote mapping).
    func testThrashingDetectionPinsOnlyThePagesThatThrash() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let a = try env.anon(8), p = pageSize
        let policy = SVMThrashingPolicy(threshold: 2)
        func group(_ first: UInt64, _ count: UInt64) -> SVMFaultGroup {
            SVMFaultGroup(space: env.space, start: a + first * p, end: a + (first + count) * p, access: .read, vmaStart: a, vmaEnd: a + 8 * p)
        }
        XCTAssertEqual(policy.placements(for: group(0, 2), device: env.device), [a..<(a + 2 * p)])
        XCTAssertEqual(policy.placements(for: group(0, 4), device: env.device), [(a + 2 * p)..<(a + 4 * p)]) // 0 and 1 pinned
        XCTAssertEqual(env.device.stats[.thrashing], 2)
        XCTAssertEqual(policy.placements(for: group(0, 4), device: env.device), []) // 2 and 3 pinned now
        XCTAssertNil(policy.placement(for: group(0, 4), device: env.device))
        XCTAssertEqual(policy.placements(for: group(5, 1), device: env.device), [(a + 5 * p)..<(a + 6 * p)])
        XCTAssertEqual(policy.placements(for: group(4, 4), device: env.device), [(a + 4 * p)..<(a + 5 * p), (a + 6 * p)..<(a + 8 * p)])
        XCTAssertEqual(env.device.stats[.thrashing], 5)
        try env.finish()
    }

    /// Thrashing detection counts each address space's pages apart: two round trips of a page
    /// in one process and a first fault at the same address in another pin nothing (one
    /// record for both would reach the threshold of 3 and pin the second process's page).
    func testThrashingDetectionKeepsEachSpaceApart() throws {
        let env = try Env(policy: SVMThrashingPolicy())
        let a = try env.anon(4)
        try env.fill(a, words: 4 * 512, seed: 1)
        for _ in 0..<2 {
            try env.device.launch(SVMWorkload.touch(base: a, pages: 4, write: true, value: 9), on: env.space, engines: 1).wait()
            for p in 0..<4 { XCTAssertEqual(try env.cpu.load(a + UInt64(p) * pageSize, as: UInt64.self), 9) }
        }
        let other = try MMCore.Process(machine: env.machine)
        let ocpu = other.makeCPU()
        let b = try other.mmap(length: 4 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        XCTAssertEqual(b, a) // the same addresses, in another space
        try ocpu.store(b, 3)
        let ospace = try env.device.bind(other.mm)
        try env.device.launch(SVMWorkload.touch(base: b, pages: 4, write: true, value: 4), on: ospace, engines: 1).wait()
        XCTAssertEqual(env.device.stats[.thrashing], 0)
        XCTAssertEqual(ospace.localPages, 4)
        XCTAssertEqual(env.device.stats[.migratedToDevice], 2 * 4 + 4)
        XCTAssertEqual(ospace.checkInvariants(), [])
        XCTAssertEqual(try ocpu.load(b, as: UInt64.self), 4)
        ocpu.detach()
        other.exit()
        try env.finish()
    }

    // MARK: the device conformance suite

    /// mprotect to read-only while a kernel streams over the range: the kernel either finished
    /// first, or is cancelled with EPERM at a write; either way every word is its old value or
    /// its new one, and no device entry is left writable (the invariant check).
    func testMprotectWhileAKernelRuns() throws {
        for delayMicros in [0, 200, 2_000] {
            let env = try Env(policy: SVMFirstTouchPolicy())
            let (a, words, run) = try env.startStream(pages: 64, seed: 5)
            syncSleep(nanoseconds: UInt64(delayMicros) * 1000)
            try env.process.mprotect(a, length: UInt64(words / 512) * pageSize, prot: .read)
            do { try run.wait() } catch { XCTAssertEqual(error.errno, .EPERM, "\(error)") }
            XCTAssertEqual(env.space.checkInvariants(), [])
            XCTAssertEqual(try env.wordsNeitherOldNorNew(a, words: words, seed: 5), 0)
            try env.finish()
        }
    }

    /// fork while a kernel streams over the range: the parent ends with every word new (the
    /// device's writes after the fork land in the parent's pages, COW broken for it), the child
    /// with each word old or new (what it held when it forked), and both tables agree.
    func testForkWhileAKernelRuns() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let (a, words, run) = try env.startStream(pages: 64, seed: 9)
        syncSleep(nanoseconds: 300_000)
        let child = try env.process.fork()
        try run.wait()
        let ccpu = child.makeCPU()
        for i in 0..<words where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(9 &+ UInt64(i)) {
            XCTFail("parent word \(i)"); break
        }
        XCTAssertEqual(try env.wordsNeitherOldNorNew(a, words: words, seed: 9, cpu: ccpu), 0)
        XCTAssertEqual(env.space.checkInvariants(), [])
        ccpu.detach()
        child.exit()
        try env.finish()
    }

    /// The process exits while a kernel runs: the kernel is cancelled with EFAULT (or had
    /// finished), the device keeps nothing of the address space, and every frame and device
    /// page comes back.
    func testProcessExitWhileAKernelRuns() throws {
        let machine = try Machine(memoryBytes: 64 << 20, devicePfnSpaceBytes: 1 << 30)
        let used = machine.usedFrames
        let process = try MMCore.Process(machine: machine)
        let device = try SVMDevice(machine: machine, capacityBytes: 16 << 20, policy: SVMFirstTouchPolicy())
        let space = try device.bind(process.mm)
        let pages = 256
        let a = try process.mmap(length: UInt64(pages) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let run = try device.launch(SVMWorkload.stream(base: a, words: pages * 512), on: space, engines: 4)
        syncSleep(nanoseconds: 500_000)
        process.exit()
        do { try run.wait() } catch { XCTAssertEqual(error.errno, .EFAULT, "\(error)") }
        XCTAssertEqual(space.mappedPages, 0)
        XCTAssertEqual(device.freePages, device.capacityPages)
        try device.shutdown()
        XCTAssertEqual(machine.checkInvariants(), [])
        XCTAssertEqual(machine.usedFrames - used, 0, "frames leaked")
    }

    /// Device removal with pages resident: shutdown evicts them to system memory with their
    /// bytes (`migrate_device_pfns`), the CPU reads every word afterwards without a device
    /// fault, and the device memory is unregistered.
    func testDeviceRemovalWithPagesResident() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let pages = 128
        let (a, words, run) = try env.startStream(pages: pages, seed: 21)
        try run.wait()
        XCTAssertEqual(env.device.capacityPages - env.device.freePages, pages)
        try env.device.shutdown()
        XCTAssertEqual(env.device.stats[.migratedToSystem], pages)
        XCTAssertEqual(env.device.freePages, env.device.capacityPages)
        XCTAssertNil(env.machine.memory.pagemap(of: env.machine.memory.page(env.device.pagemap.startPfn)))
        for i in 0..<words where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(21 &+ UInt64(i)) {
            XCTFail("word \(i)"); break
        }
        XCTAssertEqual(env.device.stats[.cpuFaultsBack], 0)
        env.cpu.detach()
        env.process.exit()
        XCTAssertEqual(env.machine.checkInvariants(), [])
        XCTAssertEqual(env.machine.usedFrames - env.used, 0)
    }

    /// Replay after an invalidation: a second kernel over pages whose device entries an
    /// munmap and an mprotect dropped faults again, exactly on those pages (the others hit).
    func testAKernelRefaultsExactlyThePagesAnInvalidationDropped() throws {
        let env = try Env(policy: SVMRemoteMapPolicy())
        let pages = 32
        let a = try env.anon(pages)
        try env.fill(a, words: pages * 512, seed: 2)
        try env.device.launch(SVMWorkload.touch(base: a, pages: pages, write: true, value: 1), on: env.space, engines: 1).wait()
        XCTAssertEqual(env.space.mappedPages, pages)
        try env.process.mprotect(a + 4 * pageSize, length: 4 * pageSize, prot: .read)
        try env.process.mprotect(a + 4 * pageSize, length: 4 * pageSize, prot: .readWrite)
        try env.process.munmap(a + 20 * pageSize, length: 2 * pageSize)
        XCTAssertEqual(env.space.mappedPages, pages - 6)
        let before = env.device.stats[.faults]
        let k = SVMKernel(name: "touch-mapped") { (e: SVMEngine) throws(SVMFatalFault) in
            for p in 0..<pages where p != 20 && p != 21 { try e.store(a + UInt64(p) * pageSize, 2) }
        }
        let run = try env.device.launch(k, on: env.space, engines: 1)
        try run.wait()
        XCTAssertEqual(env.device.stats[.faults] - before, 4)
        XCTAssertEqual(run.faultsRaised, 4)
        XCTAssertEqual(env.space.mappedPages, pages - 2)
        try env.finish()
    }

    /// Device removal while a kernel runs: the kernel is cancelled with ENODEV (or had
    /// finished), every word is old or new, the pages come back to system memory.
    func testShutdownWhileAKernelRuns() throws {
        let env = try Env(policy: SVMFirstTouchPolicy())
        let (a, words, run) = try env.startStream(pages: 256, seed: 4)
        syncSleep(nanoseconds: 1_000_000)
        try env.device.shutdown()
        do { try run.wait() } catch { XCTAssertEqual(error.errno, .ENODEV, "\(error)") }
        XCTAssertEqual(env.device.freePages, env.device.capacityPages)
        XCTAssertEqual(try env.wordsNeitherOldNorNew(a, words: words, seed: 4), 0)
        env.cpu.detach()
        env.process.exit()
        XCTAssertEqual(env.machine.checkInvariants(), [])
        XCTAssertEqual(env.machine.usedFrames - env.used, 0)
    }

    /// Two kernels at one read-only page, one reading and one writing: the writer is cancelled
    /// with EPERM, the reader finishes with the page's value (a denied write does not cancel a
    /// read of the same page, even in the same batch).
    func testADeniedWriteCancelsOnlyTheWriter() throws {
        for _ in 0..<5 {
            let env = try Env(policy: SVMRemoteMapPolicy())
            let ro = try env.anon(1)
            try env.cpu.store(ro, UInt64(77))
            try env.process.mprotect(ro, length: pageSize, prot: .read)
            let reads = SVMKernel(name: "reader") { (e: SVMEngine) throws(SVMFatalFault) in
                for _ in 0..<100 { guard try e.load(ro) == 77 else { throw SVMFatalFault(address: ro, access: .read, errno: .EIO) } }
            }
            let writer = try env.device.launch(SVMWorkload.touch(base: ro, pages: 1, write: true, value: 1), on: env.space, engines: 1)
            let reader = try env.device.launch(reads, on: env.space, engines: 2)
            XCTAssertThrowsError(try writer.wait()) { XCTAssertEqual(($0 as? SVMFatalFault)?.errno, .EPERM) }
            XCTAssertNoThrow(try reader.wait())
            XCTAssertEqual(env.device.stats[.fatalFaults], 1)
            try env.finish()
        }
    }

    /// Access counters: with faults mapped remotely, a 64 KiB region the engine reads 1,600
    /// times fires its counter (threshold 256) and its 16 pages migrate; a region read 16 times
    /// stays in system memory. The data is right either way.
    func testAccessCountersMigrateTheRegionTheDeviceKeepsTouching() throws {
        let env = try Env(policy: SVMAccessCounterPolicy(threshold: 256))
        let raw = try env.anon(64)
        let a = (raw + 0xFFFF) & ~0xFFFF // 64 KiB aligned: pages 0-15 one region, 16-31 the next
        try env.fill(a, words: 32 * 512, seed: 3)
        let k = SVMKernel(name: "hot-and-cold") { (e: SVMEngine) throws(SVMFatalFault) in
            for _ in 0..<100 { for p in 0..<16 { _ = try e.load(a + UInt64(p) * pageSize) } }
            for p in 16..<32 { _ = try e.load(a + UInt64(p) * pageSize) }
        }
        let run = try env.device.launch(k, on: env.space, engines: 1)
        try run.wait(timeoutNanoseconds: 60_000_000_000)
        XCTAssertGreaterThanOrEqual(run.remoteAccesses, 256)
        // The notification is serviced by the fault thread on its own time: wait for it.
        let deadline = monotonicNanoseconds() + 10_000_000_000
        while env.device.stats[.migratedToDevice] < 16 && monotonicNanoseconds() < deadline { syncSleep(nanoseconds: 1_000_000) }
        XCTAssertEqual(env.device.stats[.migratedToDevice], 16)
        XCTAssertGreaterThanOrEqual(env.device.stats[.accessCounters], 1)
        XCTAssertEqual(env.device.stats[.remoteMaps], 32) // every first fault mapped remotely
        // A second pass: the hot region is local (mapped when it moved), the cold one remote.
        let again = SVMKernel(name: "both") { (e: SVMEngine) throws(SVMFatalFault) in
            for p in 0..<32 { _ = try e.load(a + UInt64(p) * pageSize) }
        }
        let run2 = try env.device.launch(again, on: env.space, engines: 1)
        try run2.wait(timeoutNanoseconds: 60_000_000_000)
        XCTAssertEqual(run2.localAccesses, 16)
        XCTAssertEqual(run2.remoteAccesses, 16)
        XCTAssertEqual(run2.faultsRaised, 0)
        let resident = (0..<32).map { p -> Bool in
            guard let v = env.process.mm.pageTable.lookup(a + UInt64(p) * pageSize, level: .pte)?.entry.load() else { return false }
            return v.isSwap && v.swapEntry.isDevicePrivate
        }
        XCTAssertEqual(resident, [Bool](repeating: true, count: 16) + [Bool](repeating: false, count: 16))
        for i in 0..<(32 * 512) where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != 3 &+ UInt64(i) { XCTFail("word \(i)"); break }
        try env.finish()
    }

    /// A page the device holds exclusive for its atomics loses the device's entry to another
    /// device's migration of the range (dmirror's MIGRATE invalidation; the exclusive entry
    /// itself is not migrated): the device's next atomic restores and grabs it again instead
    /// of faulting for ever, and the count is exact. Its own migrations keep the atomic entry.
    func testAnExclusivePageWhoseEntryWasDroppedIsGrabbedAgain() throws {
        let env = try Env(policy: SVMRemoteMapPolicy())
        let a = try env.anon(2)
        try env.device.launch(SVMWorkload.counter(address: a, adds: 10), on: env.space, engines: 2).wait()
        XCTAssertEqual(env.device.stats[.exclusiveGrabs], 1)
        let module = DmirrorModule(machine: env.machine)
        let d = try module.open(minor: 0, mm: env.process.mm)
        var cmd = DmirrorCmd(addr: a, npages: 2)
        try? d.ioctl(.migrateToDevice, &cmd, buffer: DmirrorBuffer(size: 2 * Int(pageSize)))
        XCTAssertEqual(env.space.mappedPages, 0) // dmirror's MIGRATE dropped the atomic entry
        // (A watchdog: without the restore before the grab this kernel faults for ever.)
        try env.device.launch(SVMWorkload.counter(address: a, adds: 10), on: env.space, engines: 2).wait(timeoutNanoseconds: 20_000_000_000)
        XCTAssertEqual(env.device.stats[.exclusiveGrabs], 2)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 40)
        d.close()
        try env.finish()
    }

    // MARK: 2 MiB device pages

    /// A 2 MiB-aligned region of `blocks` THPs (THP "always", the CPU writes `seed + i` into
    /// every word), at a fixed 2 MiB-aligned address.
    func thpRegion(_ env: Env, blocks: Int, seed: UInt64) throws -> UInt64 {
        env.machine.memory.thp.mode = .always
        let a = try env.process.mmap(address: 0x7e00_0000_0000, length: UInt64(blocks) * pmdSize, prot: .readWrite,
                                     flags: [.private, .anonymous, .fixed])
        try env.fill(a, words: blocks * ptrsPerTable * 512, seed: seed)
        for b in 0..<blocks { XCTAssertEqual(cpuLevel(env, a + UInt64(b) * pmdSize), "thp") }
        return a
    }

    /// What the CPU maps at `addr`: "thp" (a present huge PMD), "device-pmd" (a device-private
    /// PMD), "pte", or "none".
    func cpuLevel(_ env: Env, _ addr: UInt64) -> String {
        let mm = env.process.mm
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        guard let found = mm.pageTable.lookup(addr, level: .pte) else { return "none" }
        let v = found.entry.load()
        if found.level == .pmd { return v.isPresent && v.isHuge ? "thp" : v.isSwap && v.swapEntry.isDevicePrivate ? "device-pmd" : "pmd?" }
        return "pte"
    }

    /// Under first touch, a stream over two THPs moves each as one 2 MiB device page (an
    /// order-9 device folio in a whole chunk, mapped by a device-private PMD; the first fault
    /// in a block takes the whole block); the CPU's read of one word brings its whole block
    /// back as a THP (512 pages in one migrate_to_ram); every word exact; invariants hold.
    /// Without large pages the same stream splits the THPs and moves 4 KiB pages.
    func testTwoMiBDevicePagesMoveWholeBothWays() throws {
        for large in [true, false] {
            let env = try Env(deviceMiB: 8, policy: SVMFirstTouchPolicy())
            env.device.largePages = large
            let a = try thpRegion(env, blocks: 2, seed: 10)
            let words = 2 * ptrsPerTable * 512
            try env.device.launch(SVMWorkload.stream(base: a, words: words), on: env.space, engines: 4).wait()
            XCTAssertEqual(env.device.stats[.migratedToDevice], 1024, "large \(large)")
            XCTAssertEqual(env.device.stats[.hugeToDevice], large ? 2 : 0)
            XCTAssertEqual(env.space.localPages, 1024)
            XCTAssertEqual(env.space.checkInvariants(), [])
            XCTAssertEqual(env.machine.checkInvariants(), [])
            for b in 0..<2 {
                let at = a + UInt64(b) * pmdSize
                XCTAssertEqual(cpuLevel(env, at), large ? "device-pmd" : "pte", "large \(large)")
                let pfn = env.space.lock.withLock { env.space.table[at >> pageShift]!.pfn }
                XCTAssertEqual(env.machine.memory.page(pfn).folioHead.order, large ? pmdOrder : 0)
            }
            // One CPU read in block 1: the whole block comes back (large), or that page.
            XCTAssertEqual(try env.cpu.load(a + pmdSize + 8 * 100, as: UInt64.self), SVMWorkload.stream(10 &+ UInt64(ptrsPerTable * 512 + 100)))
            XCTAssertEqual(env.device.stats[.cpuFaultsBack], large ? 512 : 1)
            XCTAssertEqual(env.device.stats[.hugeToSystem], large ? 1 : 0)
            XCTAssertEqual(cpuLevel(env, a + pmdSize), large ? "thp" : "pte")
            XCTAssertEqual(env.space.localPages, large ? 512 : 1023)
            XCTAssertEqual(env.space.checkInvariants(), [])
            for i in 0..<words where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(10 &+ UInt64(i)) {
                XCTFail("large \(large): word \(i)"); break
            }
            XCTAssertEqual(env.device.stats[.cpuFaultsBack], 1024)
            try env.finish()
        }
    }

    /// Stream, ping-pong and the counter under the two migrating policies on THP-backed memory (THP "always", 4 MiB: the
    /// device moves whole blocks as 2 MiB device pages, and the CPU threads beside the kernels
    /// bring them back whole), and at 3× a 2 MiB device under first touch (2 MiB device
    /// pages evicted whole): every word and lane right, invariants hold.
    func testWorkloadsOnTHPsWithTwoMiBDevicePages() throws {
        var large = 0
        // The others take minutes at this size in a debug build: `.ci/run` runs every
        // workload under every policy so in release (`hmm svm --thp`, 1× and 3×).
        for kind in [SVMWorkloadKind.stream, .pingpong, .counter] {
            for name in ["first-touch", "density-prefetch"] {
                let r = try SVMRunner.run(kind, policy: SVMRunner.policy(named: name)!, pages: 1024, engines: 4, rounds: 1,
                                          cpuThreads: 2, machineMiB: 64, deviceMiB: 16, thp: true)
                XCTAssertEqual(r.mismatches, 0, "\(kind) \(name)")
                XCTAssertEqual(r.invariantProblems, [], "\(kind) \(name)")
                if name == "first-touch" { large += r.counter("huge_to_device") }
            }
            let r = try SVMRunner.run(kind, policy: SVMFirstTouchPolicy(), pages: 1536, engines: 4, rounds: 1,
                                      machineMiB: 64, deviceMiB: 2, thp: true)
            XCTAssertEqual(r.mismatches, 0, "\(kind) 3x")
            XCTAssertEqual(r.invariantProblems, [], "\(kind) 3x")
            if kind != .counter { XCTAssertGreaterThan(r.counter("evictions"), 0, "\(kind) 3x") }
        }
        XCTAssertGreaterThan(large, 0)
    }

    /// A two-chunk (4 MiB) device under a one-engine stream over three THPs: the first two
    /// blocks take a chunk each as 2 MiB device pages; the third finds no free chunk, so it
    /// is not widened: its THP splits and its pages move as 4 KiB ones, the least recently
    /// used 2 MiB device page evicted whole to make room (a system THP again). Every word
    /// exact, nothing lost or leaked.
    func testTwoMiBDevicePagesAreEvictedWhole() throws {
        let env = try Env(deviceMiB: 4, policy: SVMFirstTouchPolicy())
        let a = try thpRegion(env, blocks: 3, seed: 3)
        let words = 3 * ptrsPerTable * 512
        try env.device.launch(SVMWorkload.stream(base: a, words: words), on: env.space, engines: 1).wait()
        XCTAssertEqual(env.device.stats[.migratedToDevice], 1536)
        XCTAssertEqual(env.device.stats[.hugeToDevice], 2)
        XCTAssertEqual(env.device.stats[.evictions], 1)
        XCTAssertEqual(env.device.stats[.migratedToSystem], 512)
        XCTAssertEqual(env.device.stats[.hugeToSystem], 1)
        XCTAssertEqual(cpuLevel(env, a), "thp")
        XCTAssertEqual(cpuLevel(env, a + pmdSize), "device-pmd")
        XCTAssertEqual(cpuLevel(env, a + 2 * pmdSize), "pte")
        XCTAssertEqual(env.space.checkInvariants(), [])
        XCTAssertEqual(env.machine.checkInvariants(), [])
        for i in 0..<words where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(3 &+ UInt64(i)) {
            XCTFail("word \(i)"); break
        }
        try env.finish()
    }

    /// With no 2 MiB of system memory free: eviction leaves a 2 MiB device page alone before
    /// unmapping anything (its device and CPU mappings stay), and the CPU's fault on it moves
    /// only the faulting page (its PMD split into PTEs on the way). Once 2 MiB are free again,
    /// eviction moves the rest. Every word exact, invariants hold, nothing leaks.
    func testWithoutTwoMiBOfSystemMemoryOnlyWhatCanMoveMoves() throws {
        let env = try Env(deviceMiB: 2, policy: SVMFirstTouchPolicy())
        let a = try thpRegion(env, blocks: 1, seed: 40)
        try env.device.launch(SVMWorkload.stream(base: a, words: ptrsPerTable * 512), on: env.space, engines: 2).wait()
        XCTAssertEqual(cpuLevel(env, a), "device-pmd")
        XCTAssertEqual(env.space.localPages, 512)
        // Every other system page taken: plenty of 4 KiB pages free, no 2 MiB.
        var all: [Page] = []
        while let p = env.machine.memory.allocate() { all.append(p) }
        for p in all where p.pfn % 2 == 0 { env.machine.memory.put(p) }
        let hogs = all.filter { $0.pfn % 2 == 1 }
        XCTAssertNil(env.machine.memory.allocate(order: pmdOrder))
        let inUse = { env.device.lock.withLock { (0..<env.device.capacityPages).filter { env.device.allocated[$0] }.map { env.device.pagemap.startPfn + UInt64($0) } } }
        XCTAssertEqual(env.device.evict(inUse()), 0)
        XCTAssertEqual(cpuLevel(env, a), "device-pmd") // nothing was unmapped
        XCTAssertEqual(env.space.localPages, 512)
        // The first fault splits the PMD (nothing moves), the refault moves the page.
        XCTAssertEqual(try env.cpu.load(a + 5 * pageSize, as: UInt64.self), SVMWorkload.stream(40 &+ 5 * 512))
        XCTAssertEqual(env.device.stats[.cpuFaultsBack], 1)
        XCTAssertEqual(env.device.stats[.hugeToSystem], 0)
        XCTAssertEqual(cpuLevel(env, a), "pte")
        XCTAssertEqual(env.space.checkInvariants(), [])
        XCTAssertEqual(env.machine.checkInvariants(), [])
        for f in hogs { env.machine.memory.put(f) }
        XCTAssertEqual(env.device.evict(inUse()), 511) // split: page by page now
        for i in 0..<(ptrsPerTable * 512) where try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self) != SVMWorkload.stream(40 &+ UInt64(i)) {
            XCTFail("word \(i)"); break
        }
        try env.finish()
    }

    /// No whole chunk free and no eviction (a prefetch): a THP block's 512 pages take the free
    /// small device pages there are, the THP is split, and the pages without one stay in
    /// system memory; a 2 MiB device page mapped by PTEs after a partial munmap comes back
    /// page by page; invariants hold and nothing leaks.
    func testAThpFallsBackToSmallDevicePagesWithoutAWholeChunk() throws {
        let env = try Env(deviceMiB: 4, policy: SVMFirstTouchPolicy())
        let small = try env.anon(4)
        try env.fill(small, words: 4 * 512, seed: 900)
        try env.device.launch(SVMWorkload.touch(base: small, pages: 4, write: true, value: 1), on: env.space, engines: 1).wait()
        XCTAssertEqual(env.space.localPages, 4) // chunk 0 has 4 pages in use
        let a = try thpRegion(env, blocks: 2, seed: 20)
        // Block 0 takes chunk 1 whole; block 1 finds no whole chunk and may not evict.
        XCTAssertEqual(env.device.migrateToDevice(env.space, a, a + pmdSize, evict: false), 512)
        XCTAssertEqual(cpuLevel(env, a), "device-pmd")
        XCTAssertEqual(env.device.migrateToDevice(env.space, a + pmdSize, a + 2 * pmdSize, evict: false), 508)
        XCTAssertEqual(cpuLevel(env, a + pmdSize), "pte")
        XCTAssertEqual(env.device.freePages, 0)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        // Part of block 0 unmapped: its device-private PMD is split; the rest stays on the device.
        try env.process.munmap(a + 256 * pageSize, length: 16 * pageSize)
        XCTAssertEqual(cpuLevel(env, a), "pte")
        XCTAssertEqual(env.machine.checkInvariants(), [])
        for i in 0..<(2 * ptrsPerTable * 512) where i / 512 < 256 || i / 512 >= 272 {
            let got = try env.cpu.load(a + UInt64(i) * 8, as: UInt64.self)
            if got != 20 &+ UInt64(i) { XCTFail("word \(i): \(got)"); break }
        }
        XCTAssertEqual(env.machine.checkInvariants(), [])
        try env.finish()
    }
}
