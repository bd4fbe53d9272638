import Devices
import HMM
import MMCore

/// The `hmm2` fixture's tests (two devices of the variant open on one process): T17
/// `migrate_mixed`, T22 `snapshot`, T24 `double_map`. `../shared/spec/selftests.md` leaves them
/// out; they are ported from Linux 7.2's `tools/testing/selftests/mm/hmm-tests.c` so that the
/// kernel oracle compares every case of the real suite.
extension SelftestSuite {
    /// The `hmm2` fixture's second device (`self->fd1`).
    private static func secondDevice(_ f: Fixture) throws -> Dmirror {
        guard let fd1 = f.fd1 else { throw SelftestFailure(message: "hmm2 fixture without a second device", file: #fileID, line: #line) }
        return fd1
    }

    /// A PROT_NONE anonymous mapping of `npages`, as the two tests below start.
    private static func reserve(_ f: Fixture, npages: Int, mirrorSize: Int? = nil) throws -> Fixture.Buffer {
        let p = try f.process.mmap(length: UInt64(npages * f.pageSize), prot: .none, flags: [.private, .anonymous])
        return Fixture.Buffer(ptr: p, size: npages * f.pageSize, mirrorSize: mirrorSize)
    }

    /// Page `i` of `b`: read-only zero page (`zero`), read-only with data, or writable with data
    /// (mprotect, then a CPU access as the test does). Return: the value the test computes (3).
    private static func prepareMixed(_ f: Fixture, _ base: UInt64) throws -> Int32 {
        let ps = UInt64(f.pageSize)
        // Page 2: a read-only zero page.
        try f.process.mprotect(base + 2 * ps, length: ps, prot: .read)
        let val: Int32 = try f.cpu.load(base + 2 * ps, as: Int32.self) + 3
        try expectEqual(val, 3, "zero page read + 3")
        // Page 3: written, then read-only.
        try f.process.mprotect(base + 3 * ps, length: ps, prot: .readWrite)
        try f.cpu.store(base + 3 * ps, val)
        try f.process.mprotect(base + 3 * ps, length: ps, prot: .read)
        return val
    }

    /// T17: migration to device memory of a mix of mappings. A PROT_NONE range and a range
    /// with a hole are EINVAL; pages 2–5 (zero page, read-only, writable) migrate to device 1;
    /// page 5, now on device 1, is not migrated to device 0 (ENOENT).
    static func migrateMixed(_ f: Fixture) throws {
        let fd1 = try secondDevice(f)
        let npages = 6, ps = UInt64(f.pageSize)
        let b = try reserve(f, npages: npages)
        let p = b.ptr
        try expectEqual(f.cmd(fd1, .migrateToDevice, b, npages), -Errno.EINVAL.rawValue, "MIGRATE_TO_DEV of PROT_NONE")
        try f.process.munmap(p + ps, length: ps)
        try expectEqual(f.cmd(fd1, .migrateToDevice, b, 3), -Errno.EINVAL.rawValue, "MIGRATE_TO_DEV over a hole")
        let val = try prepareMixed(f, p)
        // Pages 4–5: writable.
        try f.process.mprotect(p + 4 * ps, length: 2 * ps, prot: .readWrite)
        try f.cpu.store(p + 4 * ps, val)
        try f.cpu.store(p + 5 * ps, val)
        b.ptr = p + 2 * ps
        try f.expectCommand(fd1, .migrateToDevice, b, 4, "MIGRATE_TO_DEV of pages 2-5 to device 1")
        b.ptr = p + 5 * ps
        try expectEqual(f.cmd(f.fd, .migrateToDevice, b, 1), -Errno.ENOENT.rawValue, "MIGRATE_TO_DEV to device 0 of a page on device 1")
        b.ptr = p
        try f.process.munmap(p, length: UInt64(npages) * ps)
    }

    /// T22: a snapshot (no faults) by device 0 of: a PROT_NONE page, a hole, the zero page, a
    /// read-only page, a writable page, a page on device 0 and a page on device 1.
    static func snapshot(_ f: Fixture) throws {
        let fd1 = try secondDevice(f)
        let npages = 7, ps = UInt64(f.pageSize)
        // The kernel's test mallocs npages bytes for the mirror, and the two migrations copy a
        // page back into it (dmirror's read-back): copy_to_user succeeds there because the heap
        // beyond a 7-byte malloc is mapped. The model's buffer is the user memory itself, so
        // it is given the page that the copy writes.
        let b = try reserve(f, npages: npages, mirrorSize: f.pageSize)
        let p = b.ptr
        try f.process.munmap(p + ps, length: ps)
        let val = try prepareMixed(f, p)
        // Pages 4–6: writable; page 4 written.
        try f.process.mprotect(p + 4 * ps, length: 3 * ps, prot: .readWrite)
        try f.cpu.store(p + 4 * ps, val)
        b.ptr = p + 5 * ps
        try f.expectCommand(f.fd, .migrateToDevice, b, 1, "MIGRATE_TO_DEV of page 5 to device 0")
        b.ptr = p + 6 * ps
        try f.expectCommand(fd1, .migrateToDevice, b, 1, "MIGRATE_TO_DEV of page 6 to device 1")
        b.ptr = p
        try f.expectCommand(f.fd, .snapshot, b, npages, "SNAPSHOT")
        let want: [UInt8]
        if f.variant == .devicePrivate {
            want = [DmirrorProt.error, DmirrorProt.error, DmirrorProt.zero | DmirrorProt.read, DmirrorProt.read, DmirrorProt.write,
                    DmirrorProt.devPrivateLocal | DmirrorProt.write, DmirrorProt.none]
        } else {
            want = [DmirrorProt.error, DmirrorProt.error, DmirrorProt.zero | DmirrorProt.read, DmirrorProt.read, DmirrorProt.write,
                    DmirrorProt.devCoherentLocal | DmirrorProt.write, DmirrorProt.devCoherentRemote | DmirrorProt.write]
        }
        try expectEqual((0..<npages).map { b.mirror[byte: $0] }, want, "snapshot bytes")
        try f.process.munmap(p, length: UInt64(npages) * ps)
    }

    /// T24: two devices read the same read-only memory, each with one fault; after a
    /// migration to device 1, device 0 still reads it (faulting it back), with one fault.
    static func doubleMap(_ f: Fixture) throws {
        let fd1 = try secondDevice(f)
        let npages = 6, size = npages * f.pageSize
        let b = try f.anonBuffer(size: size)
        try f.fill(b, idx)
        try f.process.mprotect(b.ptr, length: UInt64(size), prot: .read)
        try f.expectCommand(f.fd, .read, b, npages, "device 0 READ")
        try expectEqual(b.faults, 1, "device 0 faults")
        try f.expectMirror(b, idx, "device 0 mirror")
        try f.expectCommand(fd1, .read, b, npages, "device 1 READ")
        try expectEqual(b.faults, 1, "device 1 faults")
        try f.expectMirror(b, idx, "device 1 mirror")
        try f.expectCommand(fd1, .migrateToDevice, b, npages, "MIGRATE_TO_DEV to device 1")
        try f.expectCommand(f.fd, .read, b, npages, "device 0 READ after the migration")
        try expectEqual(b.faults, 1, "device 0 faults after the migration")
        try f.expectMirror(b, idx, "device 0 mirror after the migration")
        try f.process.munmap(b.ptr, length: UInt64(size))
    }
}
