/// One TLB slot: the tag (vpn << 2 | 1 valid | 2 writable) and the host address of the frame,
/// side by side so a lookup touches one cache line.
@frozen @usableFromInline
struct TLBEntry {
    @usableFromInline var tag: UInt64
    /// Never nil (an empty slot's tag never matches), so a hit needs no nil check.
    @usableFromInline var frame: UnsafeMutableRawPointer
    @inlinable init(tag: UInt64, frame: UnsafeMutableRawPointer) { self.tag = tag; self.frame = frame }
    @usableFromInline static let empty = TLBEntry(tag: 0, frame: UnsafeMutableRawPointer(bitPattern: 0x1000)!)
}

/// A slot holds a host address only its CPU's thread uses.
extension TLBEntry: @unchecked Sendable {}

/// A direct-mapped software TLB of 256 entries. Owned by one CPU; never touched by other
/// threads (shootdowns ask the owner to flush).
@frozen @usableFromInline
struct TLB {
    @usableFromInline static let entries = 256
    @usableFromInline let slots: UnsafeMutablePointer<TLBEntry>

    init() {
        slots = .allocate(capacity: TLB.entries)
        slots.initialize(repeating: .empty, count: TLB.entries)
    }
    func deallocate() { slots.deallocate() }

    /// The frame for `address` if the TLB holds a translation allowing the access.
    @inlinable @inline(__always)
    func lookup(_ address: UInt64, write: Bool) -> UnsafeMutableRawPointer? {
        let vpn = address >> 12
        let slot = slots + (Int(truncatingIfNeeded: vpn) & (TLB.entries - 1))
        let tag = slot.pointee.tag
        let want = vpn << 2 | 1
        if write ? tag == want | 2 : tag & ~2 == want { return slot.pointee.frame }
        return nil
    }

    @inlinable @inline(__always)
    func insert(_ address: UInt64, frame: UnsafeMutableRawPointer, writable: Bool) {
        let vpn = address >> 12
        let slot = slots + (Int(truncatingIfNeeded: vpn) & (TLB.entries - 1))
        slot.pointee = TLBEntry(tag: vpn << 2 | 1 | (writable ? 2 : 0), frame: frame)
    }

    func flushAll() { for i in 0..<TLB.entries { slots[i].tag = 0 } }
}
