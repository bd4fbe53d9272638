import MMCore

/// The dmirror commands (`HMM_DMIRROR_*`) with their ioctl numbers (`_IOWR('H', nr, 40 bytes)`).
public enum DmirrorCommand: UInt32, CaseIterable, Sendable, CustomStringConvertible {
    case read = 0x00, write = 0x01, migrateToDevice = 0x02, migrateToSystem = 0x03, snapshot = 0x04
    case exclusive = 0x05, checkExclusive = 0x06, release = 0x07, flags = 0x08

    /// The ioctl request number with the generic encoding (`0xC02848nn`).
    public var ioctlNumber: UInt32 { 0xC028_4800 | rawValue }
    public init?(ioctl: UInt32) {
        guard ioctl & 0xFFFF_FF00 == 0xC028_4800, let c = DmirrorCommand(rawValue: ioctl & 0xFF) else { return nil }
        self = c
    }
    public var description: String {
        ["READ", "WRITE", "MIGRATE_TO_DEV", "MIGRATE_TO_SYS", "SNAPSHOT", "EXCLUSIVE", "CHECK_EXCLUSIVE", "RELEASE", "FLAGS"][Int(rawValue)]
    }
}

/// `struct hmm_dmirror_cmd`: in `addr`, `npages` (the flag value for FLAGS); out `cpages`, `faults`.
public struct DmirrorCmd: Equatable, Sendable {
    public var addr: UInt64
    public var npages: UInt64
    public var cpages: UInt64 = 0
    public var faults: UInt64 = 0
    public init(addr: UInt64, npages: UInt64) { self.addr = addr; self.npages = npages }
}

/// SNAPSHOT bytes (`HMM_DMIRROR_PROT_*`). Compare whole bytes: the bases overlap bitwise.
public enum DmirrorProt {
    public static let error: UInt8 = 0xFF
    public static let none: UInt8 = 0x00
    public static let read: UInt8 = 0x01
    public static let write: UInt8 = 0x02
    public static let pmd: UInt8 = 0x04
    public static let pud: UInt8 = 0x08
    public static let zero: UInt8 = 0x10
    public static let devPrivateLocal: UInt8 = 0x20
    public static let devPrivateRemote: UInt8 = 0x30
    public static let devCoherentLocal: UInt8 = 0x40
    public static let devCoherentRemote: UInt8 = 0x50
}

/// `HMM_DMIRROR_FLAG_*`.
public enum DmirrorFlag {
    public static let failAlloc: UInt64 = 1 << 0
}

/// `enum hmm_dmirror_memory_type`.
public enum DmirrorMemoryType: UInt32, Sendable {
    case devicePrivate = 1, deviceCoherent = 2
}

/// The user buffer a command copies to or from (`cmd.ptr`): host memory of the caller, as the
/// selftests' malloc'd "mirror". A buffer shorter than the command needs gives EFAULT.
/// Sendable: the caller's memory, used by the thread that issues the command (as a user
/// buffer is), never by two commands at once.
public final class DmirrorBuffer: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer
    public init(size: Int, fill: UInt8 = 0) {
        bytes = .allocate(byteCount: max(size, 0), alignment: 4096)
        bytes.initializeMemory(as: UInt8.self, repeating: fill)
    }
    deinit { bytes.deallocate() }
    public var count: Int { bytes.count }
    /// The buffer viewed as 32-bit ints (the selftests' patterns).
    public subscript(int i: Int) -> Int32 {
        get { bytes.load(fromByteOffset: i * 4, as: Int32.self) }
        set { bytes.storeBytes(of: newValue, toByteOffset: i * 4, as: Int32.self) }
    }
    public subscript(byte i: Int) -> UInt8 {
        get { bytes[i] }
        set { bytes[i] = newValue }
    }
    public func fill(_ v: UInt8) { bytes.initializeMemory(as: UInt8.self, repeating: v) }
}
