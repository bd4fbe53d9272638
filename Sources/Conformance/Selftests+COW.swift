import Devices
import HMM
import MMCore

/// Copy-on-write of device-held pages: T27 `exclusive_cow` and T29 `hmm_cow_in_device`.
/// `../shared/spec/selftests.md` leaves them out; they are ported from Linux 7.2's
/// `tools/testing/selftests/mm/hmm-tests.c` so that the kernel oracle compares every case.
extension SelftestSuite {
    /// Increments every int of `[base, base + size)` through `cpu`, checking each was `k`
    /// before, then checks every int is `k + 1` (the test's two loops, for parent and child).
    private static func incrementAll(_ f: Fixture, _ cpu: CPU, _ base: UInt64, size: Int, _ who: String) throws {
        for k in 0..<(size / 4) {
            let a = base + UInt64(k * 4)
            let v: Int32 = try cpu.load(a)
            try expectEqual(v, Int32(k), "\(who): int \(k) before the increment")
            try cpu.store(a, v + 1)
        }
        try f.expectInts(try f.ints(cpu, base, count: size / 4), { Int32($0 + 1) }, "\(who) after the increment")
    }

    /// T27: pages mapped exclusively for the device, then fork: the child and the parent each
    /// increment every int and see their own copy (copy-on-write of device-exclusive entries).
    static func exclusiveCOW(_ f: Fixture) throws {
        let npages = f.npg, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .exclusive, b, npages, "EXCLUSIVE")
        // Both processes alive, as in the kernel's test: the child increments, then the
        // parent, then the child sees its own copy still (each write copied its page).
        let child = try f.process.fork()
        let ccpu = child.makeCPU()
        let childResult: Result<Void, Error> = Result { try incrementAll(f, ccpu, b.ptr, size: size, "child") }
        let parentResult: Result<Void, Error> = Result { try incrementAll(f, f.cpu, b.ptr, size: size, "parent") }
        let childAgain: Result<Void, Error> = Result {
            try f.expectInts(try f.ints(ccpu, b.ptr, count: size / 4), { Int32($0 + 1) }, "child after the parent's increment")
        }
        ccpu.detach()
        child.exit()
        for case .failure(let e) in [childResult, childAgain] {
            throw SelftestFailure(message: "child did not exit normally: \(e)", file: #fileID, line: #line)
        }
        try parentResult.get()
        try f.process.munmap(b.ptr, length: UInt64(size))
    }

    /// T29: pages migrated to the device, then fork (the child never runs and is killed): the
    /// parent writes every page, which faults the device-private pages back and copies them;
    /// a snapshot afterwards sees every page writable in system memory.
    static func cowInDevice(_ f: Fixture) throws {
        let npages = 4, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.expectCommand(f.fd, .migrateToDevice, b, npages, "MIGRATE_TO_DEV")
        let child = try f.process.fork()
        try f.fill(b, idx)
        child.exit()
        let s = Fixture.Buffer(ptr: b.ptr, size: size, mirrorSize: npages)
        try f.expectCommand(f.fd, .snapshot, s, npages, "SNAPSHOT")
        try expectEqual((0..<npages).map { s.mirror[byte: $0] }, [UInt8](repeating: DmirrorProt.write, count: npages), "snapshot bytes")
        try f.process.munmap(b.ptr, length: UInt64(size))
    }
}
