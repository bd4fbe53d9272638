import MMSync

extension PhysicalMemory {
    /// The buddy free lists and per-CPU lists hold exactly `freeFrames` frames, each marked
    /// free and unused; the per-order and buddy counters match the lists.
    /// Locking: takes every per-CPU list lock, then the zone lock (no other lock held).
    public func checkInvariants() -> [String] {
        Lockdep.assertNoSpinLockHeld()
        for o in pcpOwners { o.lock.lock() }
        defer { for o in pcpOwners.reversed() { o.lock.unlock() } }
        zoneLock.lock(); defer { zoneLock.unlock() }
        var problems: [String] = []
        var total = 0
        for o in pcpOwners {
            for i in 0..<o.count {
                let p = page(UInt64(o.pfns[i]))
                if !p.flags.isEmpty || p.refcount != 0 || p.mapcount != 0 || p.order != 0 || p.pfn >= systemFrames {
                    problems.append("per-cpu list: \(p) not a free frame (flags \(p.flags.rawValue), refcount \(p.refcount))")
                }
            }
            total += o.count
        }
        for order in 0...PhysicalMemory.maxOrder {
            var link = freeListHead[order]
            var n = 0
            while link != PhysicalMemory.nilLink {
                let p = page(UInt64(link))
                if !p.test(.buddy) || p.order != order { problems.append("free list \(order): \(p) not a free block of that order") }
                if p.refcount != 0 || p.mapcount != 0 { problems.append("free \(p) has refcount \(p.refcount) mapcount \(p.mapcount)") }
                n += 1; total += 1 << order
                if n > Int(systemFrames) { problems.append("free list \(order) loops"); break }
                link = p.lruNext
            }
            if n != freeCountByOrder[order] { problems.append("free list \(order): \(n) blocks, counter says \(freeCountByOrder[order])") }
        }
        if total != freeFrames { problems.append("free lists hold \(total) frames, counter says \(freeFrames)") }
        let buddy = total - pcpOwners.reduce(0) { $0 + $1.count }
        if buddy != buddyFreeFrames.load() { problems.append("buddy lists hold \(buddy) frames, counter says \(buddyFreeFrames.load())") }
        return problems
    }
}
