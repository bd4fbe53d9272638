/// Page flags (`PG_*`), bits of the first word of page metadata.
public struct PageFlags: OptionSet, Sendable {
    public let rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// PG_locked: the page lock (a bit lock with waiters).
    public static let locked = PageFlags(rawValue: 1 << 0)
    public static let uptodate = PageFlags(rawValue: 1 << 1)
    public static let dirty = PageFlags(rawValue: 1 << 2)
    /// The frame is on the buddy allocator's free lists.
    public static let buddy = PageFlags(rawValue: 1 << 3)
    /// First page of a compound page (folio of order > 0).
    public static let head = PageFlags(rawValue: 1 << 4)
    /// Non-first page of a compound page.
    public static let tail = PageFlags(rawValue: 1 << 5)
    /// Never allocated or freed (the zero page, frames outside any zone).
    public static let reserved = PageFlags(rawValue: 1 << 6)
    /// A page-table page.
    public static let pageTable = PageFlags(rawValue: 1 << 7)
    /// Anonymous page: `owner` is an AnonVMA.
    public static let anon = PageFlags(rawValue: 1 << 8)
    /// PG_anon_exclusive: this anonymous page is known to be mapped by exactly one process,
    /// so a write fault may reuse it without copying (set on allocation, cleared when shared).
    public static let anonExclusive = PageFlags(rawValue: 1 << 9)
    public static let swapBacked = PageFlags(rawValue: 1 << 10)
    /// MADV_FREE'd: may be discarded instead of swapped while clean.
    public static let lazyFree = PageFlags(rawValue: 1 << 11)
    public static let hwPoison = PageFlags(rawValue: 1 << 12)
    /// The page is isolated for migration.
    public static let isolated = PageFlags(rawValue: 1 << 13)
    /// A device page (ZONE_DEVICE): `owner` holds the device memory's pgmap.
    public static let zoneDevice = PageFlags(rawValue: 1 << 14)
    public static let referenced = PageFlags(rawValue: 1 << 15)
    /// A device page sitting on its driver's free list.
    public static let deviceFree = PageFlags(rawValue: 1 << 16)
    /// The page holds a reference on its anon_vma: set when its last mapping goes while the
    /// page lives on (pinned, isolated for migration), dropped when it is freed or changes
    /// owner. A mapped page holds none (see `Page.setOwner(anon:)`).
    public static let anonVMARef = PageFlags(rawValue: 1 << 17)
    /// The head of a hugetlb folio (`folio_test_hugetlb`): it belongs to a hugetlb pool and
    /// goes back there, not to the buddy allocator, when its last reference is dropped.
    public static let hugetlb = PageFlags(rawValue: 1 << 18)
    /// A hugetlb folio whose reservation goes back to its pool when it is freed
    /// (`HPG_restore_reserve`): its owner's mapping dropped it and holds the reservation again.
    public static let hugetlbRestoreReserve = PageFlags(rawValue: 1 << 19)
    /// PG_swapcache: the folio is in the swap cache; its private word is its swap entry
    /// (`folio->swap`), and the cache holds one reference on it.
    public static let swapCache = PageFlags(rawValue: 1 << 20)
    /// PG_lru: the page is on an LRU list (`LRULists`).
    public static let lru = PageFlags(rawValue: 1 << 21)
    /// PG_active: on the active list rather than the inactive one.
    public static let active = PageFlags(rawValue: 1 << 22)
    /// In a CPU's LRU add batch, on its way to a list (the batch is named by `lruSlot`).
    public static let lruBatched = PageFlags(rawValue: 1 << 23)
    /// PG_workingset: the page was on the active list before reclaim deactivated it, or came
    /// back from swap soon enough to be activated (`workingset_refault`).
    public static let workingset = PageFlags(rawValue: 1 << 24)
    /// PG_readahead: a swap-cache page that swap readahead read without a fault asking for it;
    /// the first fault that finds it clears the flag and counts a readahead hit
    /// (`swap_update_readahead`).
    public static let readahead = PageFlags(rawValue: 1 << 25)
}

/// The kind of memory a pfn names.
public enum MemoryKind: UInt8, Sendable {
    case system = 0
    case devicePrivate = 1
    case deviceCoherent = 2
    /// A pfn with no frame behind it (unregistered device range).
    case none = 3
}
