import Devices
import HMM
import MMCore
import MMSync

/// The two fixture variants of the kernel suite.
public enum Variant: String, CaseIterable, Sendable {
    case devicePrivate = "hmm_device_private"
    case deviceCoherent = "hmm_device_coherent"
    /// The first device of the variant (`/dev/hmm_dmirror0` or `2`); the second is +1.
    public var firstMinor: Int { self == .devicePrivate ? 0 : 2 }
}

/// A failed expectation inside a selftest.
public struct SelftestFailure: Error, CustomStringConvertible {
    public let message: String
    public let file: String
    public let line: Int
    public var description: String { "\(file):\(line): \(message)" }
}

/// The kselftest fixture (`FIXTURE(hmm)` / `FIXTURE(hmm2)`): a machine with the four dmirror
/// devices, a process with a CPU, and one or two open devices of the variant.
public final class Fixture {
    public let variant: Variant
    public let machine: Machine
    public let module: DmirrorModule
    public let process: MMCore.Process
    public let cpu: CPU
    public let fd: Dmirror
    public let fd1: Dmirror?
    public let pageSize = Int(MMCore.pageSize)
    public let usedAtStart: Int
    /// Run every invariant checker after each device command (off while a test runs other
    /// threads against the same machine).
    public var checkAfterEveryCommand = true
    /// The first invariant violation seen after a command, reported at teardown.
    public private(set) var commandProblems: [String] = []
    /// The default hugetlb pool's size before `setupHugetlbDefaultPages`, restored at teardown.
    private var hugetlbPoolBefore: Int? = nil
    /// HMM_BUFFER_SIZE / page size.
    public var npg: Int { (4 << 20) / pageSize }

    /// A fixture on a machine of `memoryBytes` of RAM and `swapBytes` of swap (by default
    /// the suite's, `SelftestSuite.machineMemoryBytes` and `machineSwapBytes`).
    public init(variant: Variant, twoDevices: Bool = false, memoryBytes: UInt64? = nil, swapBytes: UInt64? = nil) throws {
        self.variant = variant
        machine = try Machine(memoryBytes: memoryBytes ?? SelftestSuite.machineMemoryBytes, devicePfnSpaceBytes: 4 << 30,
                              swapBytes: swapBytes ?? SelftestSuite.machineSwapBytes)
        module = DmirrorModule(machine: machine)
        usedAtStart = machine.usedFrames
        process = try MMCore.Process(machine: machine)
        cpu = process.makeCPU()
        fd = try module.open(minor: variant.firstMinor, mm: process.mm)
        fd1 = twoDevices ? try module.open(minor: variant.firstMinor + 1, mm: process.mm) : nil
    }

    /// Teardown: close the devices, exit the process; every frame must come back and every
    /// invariant hold.
    public func teardown() throws {
        try expect(commandProblems.isEmpty, "invariants after a command: \(commandProblems)")
        fd.close(); fd1?.close()
        cpu.detach()
        process.exit()
        if let n = hugetlbPoolBefore { machine.memory.hugetlb.setPoolSize(machine.memory.hugetlb.defaultHState, n) }
        let problems = machine.checkInvariants() + module.checkInvariants()
        try expect(problems.isEmpty, "invariants after teardown: \(problems)")
        try expectEqual(machine.usedFrames - usedAtStart, 0, "frames leaked")
    }

    // MARK: the selftests' helpers

    /// `HUGETLB_SETUP_DEFAULT_PAGES(n)`: at least `n` free default-size hugetlb pages for the
    /// test (the pool is put back at teardown). Return: the default huge page size
    /// (`/proc/meminfo`'s `Hugepagesize`). Throws a failure when the pool cannot grow.
    public func setupHugetlbDefaultPages(_ n: Int, file: String = #fileID, line: Int = #line) throws -> UInt64 {
        let pools = machine.memory.hugetlb, h = pools.defaultHState
        let before = pools.counters(h)
        if hugetlbPoolBefore == nil { hugetlbPoolBefore = before.total - before.surplus }
        if before.free - before.reserved < n { pools.setPoolSize(h, before.total - before.surplus + n - (before.free - before.reserved)) }
        let now = pools.counters(h)
        try expect(now.free - now.reserved >= n, "Not enough huge pages (\(now))", file: file, line: line)
        return h.size
    }

    /// `struct hmm_buffer`: a mapping under test and a host "mirror" buffer.
    public final class Buffer {
        public var ptr: UInt64
        public let size: Int
        public let mirror: DmirrorBuffer
        public var cpages: UInt64 = 0
        public var faults: UInt64 = 0
        init(ptr: UInt64, size: Int, mirrorSize: Int? = nil) {
            self.ptr = ptr; self.size = size; mirror = DmirrorBuffer(size: mirrorSize ?? size)
        }
    }

    public func anonBuffer(size: Int, prot: Protection = .readWrite, shared: Bool = false) throws -> Buffer {
        let p = try process.mmap(length: UInt64(size), prot: prot, flags: [shared ? .shared : .private, .anonymous])
        return Buffer(ptr: p, size: size)
    }

    /// `hmm_dmirror_cmd`: 0 or -errno; cpages/faults copied only on success.
    /// `cmd` that must succeed for the whole range: returns 0 and reports `cpages == npages`
    /// (the selftests' usual pair of ASSERTs).
    public func expectCommand(_ dev: Dmirror, _ c: DmirrorCommand, _ b: Buffer, _ npages: Int, _ what: String,
                              file: String = #fileID, line: Int = #line) throws {
        try expectEqual(cmd(dev, c, b, npages), 0, what, file: file, line: line)
        try expectEqual(b.cpages, UInt64(npages), "\(what) cpages", file: file, line: line)
    }

    public func cmd(_ dev: Dmirror, _ c: DmirrorCommand, _ b: Buffer, _ npages: Int) -> Int32 {
        var cmd = DmirrorCmd(addr: b.ptr, npages: UInt64(npages))
        defer {
            if checkAfterEveryCommand && commandProblems.isEmpty {
                let p = machine.checkInvariants() + module.checkInvariants()
                if !p.isEmpty { commandProblems = ["after \(c): "] + p }
            }
        }
        do {
            try dev.ioctl(c, &cmd, buffer: b.mirror)
            b.cpages = cmd.cpages; b.faults = cmd.faults
            return 0
        } catch { return -error.rawValue }
    }

    /// Stores ints k → f(k) over the mapping (one bulk write through the CPU).
    public func fill(_ b: Buffer, ints: Int? = nil, from: Int = 0, _ f: (Int) -> Int32) throws {
        try fill(cpu, b.ptr, count: ints ?? b.size / 4, from: from, f)
    }
    public func fill(_ cpu: CPU, _ base: UInt64, count: Int, from: Int = 0, _ f: (Int) -> Int32) throws {
        guard count > from else { return }
        var ints = [Int32](repeating: 0, count: count - from)
        for k in from..<count { ints[k - from] = f(k) }
        try ints.withUnsafeBytes { raw in try cpu.write(base + UInt64(from * 4), bytes: raw) }
    }
    /// Loads `count` ints of the mapping through the CPU.
    public func ints(_ cpu: CPU, _ base: UInt64, count: Int) throws -> [Int32] {
        let bytes = try cpu.read(base, count: count * 4)
        return bytes.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
    }
    public func fillMirror(_ b: Buffer, _ f: (Int) -> Int32) {
        for k in 0..<(b.mirror.count / 4) { b.mirror[int: k] = f(k) }
    }

    // MARK: expectations

    public func expectInts(_ actual: [Int32], from: Int = 0, _ f: (Int) -> Int32, _ what: String,
                           file: String = #fileID, line: Int = #line) throws {
        for (i, v) in actual.enumerated() where v != f(from + i) {
            throw SelftestFailure(message: "\(what): int \(from + i) is \(v), expected \(f(from + i))", file: file, line: line)
        }
    }
    public func expectMirror(_ b: Buffer, count: Int? = nil, _ f: (Int) -> Int32, _ what: String = "mirror",
                             file: String = #fileID, line: Int = #line) throws {
        for k in 0..<(count ?? b.size / 4) where b.mirror[int: k] != f(k) {
            throw SelftestFailure(message: "\(what): int \(k) is \(b.mirror[int: k]), expected \(f(k))", file: file, line: line)
        }
    }
}

public func expect(_ condition: Bool, _ message: @autoclosure () -> String, file: String = #fileID, line: Int = #line) throws {
    if !condition { throw SelftestFailure(message: message(), file: file, line: line) }
}

public func expectEqual<T: Equatable>(_ actual: T, _ expected: T, _ what: String, file: String = #fileID, line: Int = #line) throws {
    if actual != expected { throw SelftestFailure(message: "\(what): got \(actual), expected \(expected)", file: file, line: line) }
}
