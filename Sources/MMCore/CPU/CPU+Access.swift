import MMSync

/// Loads, stores and atomics of a CPU, through its TLB.
extension CPU {
    /// Loads a naturally aligned integer. Unaligned multi-byte accesses must not cross a page
    /// (use `read(_:count:)` for byte ranges).
    @inlinable @inline(__always)
    public func load<T: FixedWidthInteger & BitwiseCopyable>(_ address: UInt64, as type: T.Type = T.self) throws(AccessFault) -> T {
        enterUser(); defer { exitUser() }
        precondition((address & 0xFFF) + UInt64(MemoryLayout<T>.size) <= pageSize, "access crosses a page")
        let p = try translate(address, write: false)
        return p.loadUnaligned(as: T.self)
    }

    @inlinable @inline(__always)
    public func store<T: FixedWidthInteger & BitwiseCopyable>(_ address: UInt64, _ value: T) throws(AccessFault) {
        enterUser(); defer { exitUser() }
        precondition((address & 0xFFF) + UInt64(MemoryLayout<T>.size) <= pageSize, "access crosses a page")
        let p = try translate(address, write: true)
        p.storeBytes(of: value, as: T.self)
    }

    /// Reads `count` bytes starting at `address` (any alignment, any number of pages).
    public func read(_ address: UInt64, count: Int) throws(AccessFault) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var failure: AccessFault? = nil
        out.withUnsafeMutableBytes { buf in
            do throws(AccessFault) { try read(address, into: buf) } catch { failure = error }
        }
        if let failure { throw failure }
        return out
    }

    /// Reads into a buffer, page by page.
    public func read(_ address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(AccessFault) {
        enterUser(); defer { exitUser() }
        var done = 0
        while done < buffer.count {
            let a = address &+ UInt64(done)
            let chunk = min(buffer.count - done, Int(pageSize - (a & 0xFFF)))
            let p = try translate(a, write: false)
            (buffer.baseAddress! + done).copyMemory(from: p, byteCount: chunk)
            done += chunk
        }
    }

    /// Writes bytes starting at `address`, page by page.
    public func write(_ address: UInt64, bytes: UnsafeRawBufferPointer) throws(AccessFault) {
        enterUser(); defer { exitUser() }
        var done = 0
        while done < bytes.count {
            let a = address &+ UInt64(done)
            let chunk = min(bytes.count - done, Int(pageSize - (a & 0xFFF)))
            let p = try translate(a, write: true)
            p.copyMemory(from: bytes.baseAddress! + done, byteCount: chunk)
            done += chunk
        }
    }

    public func write(_ address: UInt64, _ bytes: [UInt8]) throws(AccessFault) {
        var failure: AccessFault? = nil
        bytes.withUnsafeBytes { b in
            do throws(AccessFault) { try write(address, bytes: b) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Atomic compare-exchange of an aligned 8-byte word. Returns the previous value.
    public func compareExchange(_ address: UInt64, expected: UInt64, desired: UInt64) throws(AccessFault) -> UInt64 {
        enterUser(); defer { exitUser() }
        precondition(address & 7 == 0, "unaligned atomic")
        let p = try translate(address, write: true)
        return AtomicU64Ref(p).compareExchange(expected: expected, desired: desired).original
    }

    /// Atomic fetch-and-add of an aligned 8-byte word. Returns the previous value.
    public func fetchAdd(_ address: UInt64, _ delta: UInt64) throws(AccessFault) -> UInt64 {
        enterUser(); defer { exitUser() }
        precondition(address & 7 == 0, "unaligned atomic")
        let p = try translate(address, write: true)
        return AtomicU64Ref(p).fetchAdd(delta)
    }

    /// Atomic 32-bit fetch-and-add (on the containing 8-byte word).
    public func fetchAdd32(_ address: UInt64, _ delta: UInt32) throws(AccessFault) -> UInt32 {
        precondition(address & 3 == 0, "unaligned atomic")
        let word = address & ~7
        let shift = (address & 4) * 8
        while true {
            let old = try load(word, as: UInt64.self)
            let cur = UInt32(truncatingIfNeeded: old >> shift)
            let new = (old & ~(UInt64(0xFFFF_FFFF) << shift)) | (UInt64(cur &+ delta) << shift)
            if try compareExchange(word, expected: old, desired: new) == old { return cur }
        }
    }
}

/// Accesses made inside `CPU.run`, where the CPU is already in user mode: each one is just the
/// shootdown boundary check, the TLB lookup and the memory access (the tight-loop API).
@frozen
public struct UserAccess {
    @usableFromInline let cpu: CPU
    @inlinable init(_ cpu: CPU) { self.cpu = cpu }

    @inlinable @inline(__always)
    public func load<T: FixedWidthInteger & BitwiseCopyable>(_ address: UInt64, as type: T.Type = T.self) throws(AccessFault) -> T {
        precondition((address & 0xFFF) &+ UInt64(MemoryLayout<T>.size) <= 4096, "access crosses a page")
        return try cpu.translate(address, write: false).loadUnaligned(as: T.self)
    }

    @inlinable @inline(__always)
    public func store<T: FixedWidthInteger & BitwiseCopyable>(_ address: UInt64, _ value: T) throws(AccessFault) {
        precondition((address & 0xFFF) &+ UInt64(MemoryLayout<T>.size) <= 4096, "access crosses a page")
        try cpu.translate(address, write: true).storeBytes(of: value, as: T.self)
    }
}

extension CPU {
    /// Runs `body` in user mode with the tight-loop access API (see `UserAccess`). The body
    /// must consist of accesses and brief computation: a shootdown waits for its next access.
    @inlinable
    public func withUserAccess<R>(_ body: (UserAccess) throws -> R) rethrows -> R {
        enterUser(); defer { exitUser() }
        return try body(UserAccess(self))
    }
}
