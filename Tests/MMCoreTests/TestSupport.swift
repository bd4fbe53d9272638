import XCTest
@testable import MMCore
import MMSync

typealias Process = MMCore.Process

/// A machine with one process and one CPU; `check()` runs every invariant checker.
final class Env {
    let machine: Machine
    let process: Process
    let cpu: CPU
    var memory: PhysicalMemory { machine.memory }
    var mm: AddressSpace { process.mm }
    let usedAtStart: Int

    /// Problems the per-operation checker found (see `checkEveryOperation`).
    private(set) var operationProblems: [String] = []
    private let problemLock = Lock("env")

    /// With `checkEveryOperation`, every invariant runs after every system call, fault, GUP and
    /// migration (single-threaded tests only: the checkers need a quiescent machine).
    /// With `swapFile`, the swap area is a temporary host file (no `SWP_SYNCHRONOUS_IO`).
    init(mib: UInt64 = 64, swapPages: UInt64 = 0, swapFile: Bool = false, checkEveryOperation: Bool = true) throws {
        machine = try Machine(memoryBytes: mib << 20, devicePfnSpaceBytes: 1 << 30,
                              swapBytes: swapPages == 0 ? 0 : (swapPages + 1) * pageSize, swapBacking: swapFile ? .temporaryFile() : .memory)
        usedAtStart = machine.usedFrames
        process = try Process(machine: machine)
        cpu = process.makeCPU()
        if checkEveryOperation {
            let m = machine
            machine.onOperation = { [weak self] name in
                let problems = m.checkInvariants()
                guard !problems.isEmpty, let self else { return }
                self.problemLock.withLock { self.operationProblems.append("after \(name): \(problems)") }
            }
        }
    }

    /// Maps `pages` pages of private anonymous read/write memory.
    func anon(_ pages: Int, prot: Protection = .readWrite, shared: Bool = false) throws -> UInt64 {
        try process.mmap(length: UInt64(pages) * pageSize, prot: prot, flags: [shared ? .shared : .private, .anonymous])
    }

    func check(file: StaticString = #filePath, line: UInt = #line) {
        let problems = machine.checkInvariants()
        XCTAssertEqual(problems, [], "invariants", file: file, line: line)
        let seen = problemLock.withLock { operationProblems }
        XCTAssertEqual(seen, [], "invariants after an operation", file: file, line: line)
    }

    /// Exits the process and checks that every frame came back.
    /// `stillHeld`: frames legitimately kept by objects the test still holds (a file's cache).
    func teardown(stillHeld: Int = 0, file: StaticString = #filePath, line: UInt = #line) {
        cpu.detach()
        process.exit()
        check(file: file, line: line)
        XCTAssertEqual(machine.usedFrames - usedAtStart, stillHeld, "frames leaked after exit", file: file, line: line)
        XCTAssertEqual(memory.swap.freeSlots, memory.swap.totalSlots, "swap slots leaked after exit", file: file, line: line)
    }

    /// Memory pressure: half the free frames become written anonymous pages (swappable; at
    /// `base`, IDX) and every frame still free is taken, so the next allocation must reclaim.
    /// Give `taken` back with `memory.put`.
    func fillHalfAndTakeTheRest() throws -> (base: UInt64, pages: Int, taken: [Page]) {
        let n = memory.freeFrames / 2
        let base = try anon(n)
        try fillIDX(cpu, base, bytes: UInt64(n) * pageSize)
        var taken: [Page] = []
        while let p = memory.allocate() { taken.append(p) }
        return (base, n, taken)
    }

    func pfn(_ address: UInt64) throws -> UInt64? {
        let e = try mm.pagemap(address, count: 1)[0]
        return e.isPresent ? e.pfn : nil
    }
}

/// Stores the pattern IDX (int k = k) as 32-bit ints over `bytes` bytes from `base`.
func fillIDX(_ cpu: CPU, _ base: UInt64, bytes: UInt64, plus c: Int32 = 0) throws {
    var k: UInt64 = 0
    while k * 4 < bytes { try cpu.store(base + k * 4, Int32(truncatingIfNeeded: k) &+ c); k += 1 }
}

func checkIDX(_ cpu: CPU, _ base: UInt64, bytes: UInt64, plus c: Int32 = 0, file: StaticString = #filePath, line: UInt = #line) throws {
    var k: UInt64 = 0
    var bad = 0
    while k * 4 < bytes {
        let v: Int32 = try cpu.load(base + k * 4)
        if v != Int32(truncatingIfNeeded: k) &+ c {
            if bad == 0 { XCTFail("int \(k): got \(v), expected \(Int32(truncatingIfNeeded: k) &+ c)", file: file, line: line) }
            bad += 1
        }
        k += 1
    }
    XCTAssertEqual(bad, 0, file: file, line: line)
}

func XCTAssertErrno<T>(_ expected: Errno, _ body: () throws(Errno) -> T, file: StaticString = #filePath, line: UInt = #line) {
    do {
        let v = try body()
        XCTFail("expected \(expected), got success \(v)", file: file, line: line)
    } catch {
        XCTAssertEqual(error, expected, file: file, line: line)
    }
}

func XCTAssertFault<T>(_ expected: AccessFault, _ body: () throws(AccessFault) -> T, file: StaticString = #filePath, line: UInt = #line) {
    do {
        let v = try body()
        XCTFail("expected \(expected), got \(v)", file: file, line: line)
    } catch {
        XCTAssertEqual(error, expected, file: file, line: line)
    }
}
