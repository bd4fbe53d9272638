import MMSync

/// A handle on one frame's metadata (the `struct page` analogue): 64 bytes in a flat array
/// indexed by pfn. No object per page; this struct is two words and lives in registers.
///
/// Layout (byte offsets): 0 flags, 8 refcount, 12 mapcount, 16 pincount, 20 order, 21 kind, 22 LRU batch,
/// 24 page-table lock word, 32 owner (mapping), 40 index, 48 private, 56 lru next, 60 lru prev.
@frozen
public struct Page: Equatable, Hashable, CustomStringConvertible {
    public let pfn: UInt64
    @usableFromInline let meta: UnsafeMutableRawPointer

    @inlinable init(pfn: UInt64, meta: UnsafeMutableRawPointer) { self.pfn = pfn; self.meta = meta }

    public static let metadataStride = 64

    public static func == (a: Page, b: Page) -> Bool { a.pfn == b.pfn }
    public func hash(into h: inout Hasher) { h.combine(pfn) }
    public var description: String { "pfn \(pfn)" }

    // MARK: atomics
    @inlinable public var flagsWord: AtomicU64Ref { AtomicU64Ref(meta) }
    @inlinable public var refcountWord: AtomicI32Ref { AtomicI32Ref(meta + 8) }
    @inlinable public var mapcountWord: AtomicI32Ref { AtomicI32Ref(meta + 12) }
    @inlinable public var pincountWord: AtomicI32Ref { AtomicI32Ref(meta + 16) }
    /// The split page-table lock of a page-table page.
    @inlinable public var ptl: SpinLockRef { SpinLockRef(meta + 24) }

    @inlinable public var flags: PageFlags { PageFlags(rawValue: flagsWord.load(.acquire)) }
    @inlinable public func test(_ f: PageFlags) -> Bool { flagsWord.load(.acquire) & f.rawValue != 0 }
    @inlinable public func set(_ f: PageFlags) { flagsWord.fetchOr(f.rawValue) }
    @inlinable public func clear(_ f: PageFlags) { flagsWord.fetchAnd(~f.rawValue) }
    /// Sets `set` and clears `clear` in one atomic step (one compare-and-swap when nobody
    /// changes the word meanwhile, instead of one locked operation per flag).
    @inlinable public func changeFlags(set: PageFlags, clear: PageFlags) {
        var old = flagsWord.load(.relaxed)
        while true {
            let (done, seen) = flagsWord.compareExchange(expected: old, desired: (old & ~clear.rawValue) | set.rawValue)
            if done { return }
            old = seen
        }
    }

    @inlinable public var refcount: Int32 { refcountWord.load() }
    @inlinable public var mapcount: Int32 { mapcountWord.load() }
    @inlinable public var pincount: Int32 { pincountWord.load() }

    // MARK: plain fields (written while the page is private to its allocator or under its lock)
    @inlinable public var order: Int {
        get { Int(meta.load(fromByteOffset: 20, as: UInt8.self)) }
        nonmutating set { meta.storeBytes(of: UInt8(newValue), toByteOffset: 20, as: UInt8.self) }
    }
    /// The LRU add batch holding the page while `.lruBatched` (byte 22).
    var lruSlot: UInt8 {
        get { meta.load(fromByteOffset: 22, as: UInt8.self) }
        nonmutating set { meta.storeBytes(of: newValue, toByteOffset: 22, as: UInt8.self) }
    }
    @inlinable public var kind: MemoryKind {
        get { MemoryKind(rawValue: meta.load(fromByteOffset: 21, as: UInt8.self)) ?? .none }
        nonmutating set { meta.storeBytes(of: newValue.rawValue, toByteOffset: 21, as: UInt8.self) }
    }
    @inlinable public var ownerBits: UInt64 {
        get { AtomicU64Ref(meta + 32).load(.acquire) }
        nonmutating set { AtomicU64Ref(meta + 32).store(newValue, .release) }
    }
    /// Page offset: linear page index for anonymous pages, file page index for file pages.
    @inlinable public var index: UInt64 {
        get { meta.load(fromByteOffset: 40, as: UInt64.self) }
        nonmutating set { meta.storeBytes(of: newValue, toByteOffset: 40, as: UInt64.self) }
    }
    /// Per-use private word (swap entry, device-private backing pfn, ...).
    @inlinable public var privateWord: UInt64 {
        get { AtomicU64Ref(meta + 48).load(.acquire) }
        nonmutating set { AtomicU64Ref(meta + 48).store(newValue, .release) }
    }
    @inlinable var lruNext: UInt32 {
        get { meta.load(fromByteOffset: 56, as: UInt32.self) }
        nonmutating set { meta.storeBytes(of: newValue, toByteOffset: 56, as: UInt32.self) }
    }
    @inlinable var lruPrev: UInt32 {
        get { meta.load(fromByteOffset: 60, as: UInt32.self) }
        nonmutating set { meta.storeBytes(of: newValue, toByteOffset: 60, as: UInt32.self) }
    }

    // MARK: page lock
    /// Locks the page (sleeping). Locking: must not hold a page-table lock (it may sleep).
    /// Every page lock is one lockdep class, as `PG_locked` is one wait bit for all folios.
    public static let lockClass = Lockdep.LockClass(.bitlock, "PG_locked")
    /// A page's lock is its folio's (`lock_page` locks `page_folio(page)`): locking a tail page
    /// locks the head. A caller that holds a reference keeps the folio from being split
    /// meanwhile (a split needs every other reference gone).
    @inlinable public func lock(file: StaticString = #fileID, line: UInt = #line) {
        BitLock.lock(folioHead.flagsWord, bit: PageFlags.locked.rawValue, class: Page.lockClass, file: file, line: line)
    }
    @inlinable public func tryLock(file: StaticString = #fileID, line: UInt = #line) -> Bool {
        BitLock.tryLock(folioHead.flagsWord, bit: PageFlags.locked.rawValue, class: Page.lockClass, file: file, line: line)
    }
    @inlinable public func unlock(file: StaticString = #fileID, line: UInt = #line) {
        BitLock.unlock(folioHead.flagsWord, bit: PageFlags.locked.rawValue, class: Page.lockClass, file: file, line: line)
    }
    @inlinable public var isLocked: Bool { folioHead.test(.locked) }
    /// Releases a lock this page got with its flags, not through `lock()`: a folio split's new
    /// folios start locked (as their head was), and lockdep never saw them taken.
    package func unlockInherited() {
        BitLock.unlock(flagsWord, bit: PageFlags.locked.rawValue, class: nil)
    }
    /// Whether the frame is free (no reference, or back in the buddy allocator): what the
    /// invariant checkers look for under a mapping. A tail page is as free as its folio.
    public var isFreeFrame: Bool { let h = folioHead; return h.refcount <= 0 || h.test(.buddy) }
    /// The head page of the folio this page belongs to (`page_folio`): itself unless it is a
    /// tail page, whose private word names its head.
    @inlinable public var folioHead: Page {
        guard test(.tail) else { return self }
        let head = privateWord
        return Page(pfn: head, meta: meta - Int(pfn &- head) &* Page.metadataStride)
    }
    /// Pages in the folio headed by this page (`folio_nr_pages`).
    @inlinable public var folioPages: UInt64 { UInt64(1) << order }
    /// Waits until the page is unlocked (migration_entry_wait). False on timeout.
    @inlinable @discardableResult
    public func waitUnlocked(timeoutNanoseconds: UInt64? = nil) -> Bool {
        Lockdep.assertNoSpinLockHeld()
        return BitLock.waitUnlocked(folioHead.flagsWord, bit: PageFlags.locked.rawValue, timeoutNanoseconds: timeoutNanoseconds)
    }

    // MARK: owner (page->mapping)
    @usableFromInline static let ownerTagAnon: UInt64 = 1
    @usableFromInline static let ownerTagMask: UInt64 = 3

    /// The anon_vma of an anonymous page, uncounted (`_withUnsafeGuaranteedRef` borrows it
    /// without a retain; valid while the page's lock or its pinned anon_vma keeps it).
    @inlinable var anonVMARef: Unmanaged<AnonVMA>? {
        let bits = ownerBits
        guard bits & Page.ownerTagMask == Page.ownerTagAnon else { return nil }
        return Unmanaged<AnonVMA>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits & ~Page.ownerTagMask))!)
    }
    /// The anon_vma of an anonymous page.
    public var anonVMA: AnonVMA? {
        let bits = ownerBits
        guard bits & Page.ownerTagMask == Page.ownerTagAnon else { return nil }
        return Unmanaged<AnonVMA>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits & ~Page.ownerTagMask))!).takeUnretainedValue()
    }
    /// Whether the owner is a file (its page cache), without touching the file object: a
    /// walker that does not hold the file uses `Machine.shmemFile(owning:)` to get it safely.
    @inlinable public var hasFileOwner: Bool { let bits = ownerBits; return bits != 0 && bits & Page.ownerTagMask == 0 }
    /// The file (page cache) a file page belongs to.
    public var file: ShmemFile? {
        let bits = ownerBits
        guard bits != 0, bits & Page.ownerTagMask == 0 else { return nil }
        return Unmanaged<ShmemFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits))!).takeUnretainedValue()
    }
    /// Sets the owner (`folio->mapping = anon_vma | PAGE_MAPPING_ANON`) of a page that is not
    /// mapped yet (a migration's destination), holding a reference on it until the page is
    /// freed or changes owner: its migration entries may be zapped before it is ever mapped.
    /// The fault path's new pages, mapped at once under the PTE lock, take none
    /// (`addNewAnonRmap`).
    package func setOwner(anon: Unmanaged<AnonVMA>) {
        releaseOwner()
        ownerBits = UInt64(UInt(bitPattern: anon.toOpaque())) | Page.ownerTagAnon
        set(.anon)
        holdAnonVMA()
    }
    /// Sets the same anon_vma as `other`, which is mapped or holds a reference on it (the
    /// caller has it locked), holding a reference as `setOwner(anon:)` does.
    /// Precondition: `other` is anonymous.
    package func setOwner(sameAnonAs other: Page) {
        let bits = other.ownerBits
        precondition(bits & Page.ownerTagMask == Page.ownerTagAnon, "\(other) is not anonymous")
        releaseOwner()
        ownerBits = bits
        set(.anon)
        holdAnonVMA()
    }
    func setOwner(file: ShmemFile) {
        // Not retained: the file owns its page cache and clears the owner of every page it drops.
        releaseOwner()
        ownerBits = UInt64(UInt(bitPattern: Unmanaged.passUnretained(file).toOpaque()))
    }
    /// The page holds a reference on its anon_vma from now until it is freed or changes
    /// owner (the flag makes it one reference, however often this is called): its last
    /// mapping went, or it got its owner before being mapped. A pfn walker that takes a page
    /// reference (migration, device eviction) then always finds valid memory behind the owner,
    /// even once the VMAs are gone (the kernel relies on RCU and type-stable anon_vmas).
    /// Contract not checkable here: callers hold the PTE lock of the last mapping (the VMA
    /// is still linked to the anon_vma) or a reference on the anon_vma themselves.
    package func holdAnonVMA() {
        let bits = ownerBits
        guard bits & Page.ownerTagMask == Page.ownerTagAnon else { return }
        if flagsWord.fetchOr(PageFlags.anonVMARef.rawValue) & PageFlags.anonVMARef.rawValue == 0 {
            _ = Unmanaged<AnonVMA>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits & ~Page.ownerTagMask))!).retain()
        }
    }
    /// Clears the owner (a freed page, or one that changes hands), dropping the reference an
    /// unmapped page held.
    @inlinable package func releaseOwner() {
        let bits = ownerBits
        guard bits != 0 else { return }
        ownerBits = 0
        if bits & Page.ownerTagMask == Page.ownerTagAnon,
           flagsWord.fetchAnd(~PageFlags.anonVMARef.rawValue) & PageFlags.anonVMARef.rawValue != 0 {
            Unmanaged<AnonVMA>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits & ~Page.ownerTagMask))!).release()
        }
    }

    @inlinable public var isAnon: Bool { ownerBits & Page.ownerTagMask == Page.ownerTagAnon }
    @inlinable public var isDevicePrivate: Bool { kind == .devicePrivate }
    @inlinable public var isDeviceCoherent: Bool { kind == .deviceCoherent }
    @inlinable public var isZoneDevice: Bool { kind == .devicePrivate || kind == .deviceCoherent }
}
