/// A direct-mapped software TLB: 256 entries, each a tag (vpn, valid and writable bits) and the
/// host address of the frame. Owned by one CPU; never touched by other threads.
@usableFromInline
struct TLB {
    @usableFromInline static let entries = 256
    /// tag = vpn << 2 | 1 (valid) | 2 (writable).
    @usableFromInline let tags: UnsafeMutablePointer<UInt64>
    @usableFromInline let frames: UnsafeMutablePointer<UnsafeMutableRawPointer?>

    init() {
        tags = .allocate(capacity: TLB.entries)
        tags.initialize(repeating: 0, count: TLB.entries)
        frames = .allocate(capacity: TLB.entries)
        frames.initialize(repeating: nil, count: TLB.entries)
    }
    func deallocate() { tags.deallocate(); frames.deallocate() }

    /// The frame for `address` if the TLB holds a translation allowing the access.
    @inlinable @inline(__always)
    func lookup(_ address: UInt64, write: Bool) -> UnsafeMutableRawPointer? {
        let vpn = address >> 12
        let slot = Int(truncatingIfNeeded: vpn) & (TLB.entries - 1)
        let tag = tags[slot]
        let want = vpn << 2 | 1
        if write ? tag == want | 2 : tag & ~2 == want { return frames[slot] }
        return nil
    }

    @inlinable @inline(__always)
    func insert(_ address: UInt64, frame: UnsafeMutableRawPointer, writable: Bool) {
        let vpn = address >> 12
        let slot = Int(truncatingIfNeeded: vpn) & (TLB.entries - 1)
        tags[slot] = vpn << 2 | 1 | (writable ? 2 : 0)
        frames[slot] = frame
    }

    func flushAll() { tags.update(repeating: 0, count: TLB.entries) }
}
