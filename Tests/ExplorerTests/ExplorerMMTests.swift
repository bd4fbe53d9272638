import XCTest
import Explorer
@testable import MMCore
import MMSync

/// The explorer on the real memory manager: the same fault, munmap and shootdown code that
/// runs on real threads, one schedule at a time.
final class ExplorerMMTests: XCTestCase {
    struct Wrong: Error, CustomStringConvertible { let description: String }

    /// Two CPU threads write the same eight pages (faulting them in) while the body unmaps
    /// the upper half. In every schedule: the lower half holds both threads' words, every
    /// invariant holds, and exit frees every frame.
    func testFaultingCPUsAndMunmapRunCleanInEverySchedule() {
        for strategy in [Strategy.random, .pct(depth: 3)] {
            let report = Explorer.explore(strategy: strategy, seeds: 0..<40) {
                let m = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
                let used = m.usedFrames
                let p = try MMCore.Process(machine: m)
                let a = try p.mmap(length: 8 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
                let ts = (0..<2).map { i in
                    p.spawnThread(name: "cpu\(i)") { cpu in
                        cpu.run { cpu in
                            for pg in 0..<8 { try? cpu.store(a + UInt64(pg) * pageSize + UInt64(i) * 8, UInt64(i + 1)) }
                        }
                    }
                }
                try p.munmap(a + 4 * pageSize, length: 4 * pageSize)
                ts.forEach { $0.join() }
                let cpu = p.makeCPU()
                for pg in 0..<4 {
                    for i in 0..<2 {
                        let v = try cpu.run { cpu in try cpu.load(a + UInt64(pg) * pageSize + UInt64(i) * 8, as: UInt64.self) }
                        if v != UInt64(i + 1) { throw Wrong(description: "page \(pg) word \(i): expected \(i + 1), got \(v)") }
                    }
                }
                cpu.detach()
                let problems = m.checkInvariants()
                if !problems.isEmpty { throw Wrong(description: "invariants: \(problems)") }
                p.exit()
                if m.usedFrames != used { throw Wrong(description: "expected \(used) frames in use after exit, got \(m.usedFrames)") }
            }
            XCTAssertNil(report.failure, "\(strategy): \(report.failure?.failure?.description ?? "")")
            XCTAssertEqual(report.executions, 40)
            // A random walk switches at any step; PCT keeps a priority order and changes it at
            // d - 1 points only, so it covers fewer executions by design.
            XCTAssertGreaterThan(report.distinctExecutions, strategy == .random ? 20 : 2, "\(strategy)")
        }
    }
    /// The step invariants hold at every decision of faulting CPUs racing an munmap (at least
    /// 40 checks in every schedule), and they name what breaks: a frame freed while a PTE and
    /// a TLB entry still map it.
    func testStepInvariantsHoldAtEveryStepAndNameAFrameFreedWhileMapped() throws {
        let checks = Shared(0), fewest = Shared(Int.max)
        let report = Explorer.explore(strategy: .random, seeds: 0..<20, checkEveryStep: true) {
            if checks.value > 0 { fewest.value = min(fewest.value, checks.value) }
            checks.value = 0
            let m = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
            Sync.addStepCheck { [weak m] in checks.value += 1; return m?.checkStepInvariants() ?? [] }
            let p = try MMCore.Process(machine: m)
            let a = try p.mmap(length: 4 * pageSize, prot: .readWrite, flags: [.private, .anonymous])
            let ts = (0..<2).map { i in
                p.spawnThread(name: "cpu\(i)") { cpu in
                    cpu.run { cpu in for pg in 0..<4 { try? cpu.store(a + UInt64(pg) * pageSize + UInt64(i) * 8, UInt64(i + 1)) } }
                }
            }
            try p.munmap(a + 2 * pageSize, length: 2 * pageSize)
            ts.forEach { $0.join() }
            p.exit()
        }
        XCTAssertNil(report.failure, report.failure?.failure?.description ?? "")
        XCTAssertEqual(report.executions, 20)
        XCTAssertGreaterThanOrEqual(min(fewest.value, checks.value), 40)

        // Outside the explorer (nothing else runs): a mapped page whose reference count reads
        // 0 is a free frame under a PTE and under the TLB entry of the CPU that wrote it.
        let m = try Machine(memoryBytes: 16 << 20, devicePfnSpaceBytes: 0)
        let p = try MMCore.Process(machine: m)
        let a = try p.mmap(length: pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let cpu = p.makeCPU()
        try cpu.run { cpu in try cpu.store(a, UInt64(7)) }
        XCTAssertEqual(m.checkStepInvariants(), [])
        let pfn = try XCTUnwrap(p.mm.pagemap(a, count: 1).first).pfn
        let page = m.memory.page(pfn)
        let refs = page.refcount
        page.refcountWord.store(0)
        XCTAssertEqual(m.checkStepInvariants(), [
            "mm \(p.mm.id): 0x\(String(a, radix: 16)) maps free frame \(pfn) (PTE \(p.mm.pageTable.lookup(a, level: .pte)!.entry.load()))",
            "mm \(p.mm.id) cpu \(cpu.index): TLB maps 0x\(String(a, radix: 16)) to free frame \(pfn)",
        ])
        page.refcountWord.store(refs)
        XCTAssertEqual(m.checkStepInvariants(), [])
        // Failure reports name a page-table entry by its address space, level and address.
        let entry = try XCTUnwrap(p.mm.pageTable.lookup(a, level: .pte)).entry
        XCTAssertEqual(m.describePageTableEntry(at: UnsafeRawPointer(entry.address)),
                       "mm \(p.mm.id) pte 0x\(String(a, radix: 16)) = \(entry.load())")
        XCTAssertNil(m.describePageTableEntry(at: UnsafeRawPointer(m.memory.frame(pfn))), "a data page is no table")
        cpu.detach()
        p.exit()
    }
}
