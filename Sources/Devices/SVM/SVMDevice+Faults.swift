import HMM
import MMCore
import MMSync

/// Faults on consecutive pages of one space with the same access, serviced together (UVM
/// services a batch by VA block, nouveau by range).
public struct SVMFaultGroup: Sendable {
    /// The address space the faults are in (a policy keeps its records per space).
    public let space: SVMSpace
    public let start: UInt64
    public let end: UInt64
    public let access: SVMAccess
    /// The VMA holding the group: a policy's migration range must stay inside it.
    public let vmaStart: UInt64
    public let vmaEnd: UInt64
    public var pages: Int { Int((end - start) >> pageShift) }
}

extension SVMDevice {
    /// The fault thread (UVM's bottom half, `nouveau_svm_fault`): drain a batch, service it,
    /// replay; until the device shuts down.
    func faultLoop() {
        while let batch = faults.drain(max: SVMDevice.batchSize) {
            serviceBatch(batch)
            faults.serviced()
        }
    }

    /// Waits until the fault thread has serviced everything queued, access-counter
    /// notifications included (they outlive the kernel that sent them): a quiet point for
    /// invariant checks. Locking: none held.
    public func waitIdle() {
        lock.assertNotHeld()
        faults.waitIdle()
    }

    /// One batch: duplicates dropped (same space and page: the strongest access stands for
    /// them; and faults on pages mapped since with the access they need), the rest sorted by
    /// space and address and cut into groups of consecutive pages with one access, within one
    /// 2 MiB region; each group serviced; then every engine that faulted is replayed, no
    /// earlier in virtual time than the batch's end. A group that fails (no VMA, no
    /// permission) cancels the kernels whose engines faulted in it. (Virtual time follows the
    /// batches as they formed: how many faults met in one depends on the engines' timing.)
    func serviceBatch(_ entries: [SVMFault]) {
        let wall0 = monotonicNanoseconds()
        let notes = entries.filter(\.counter), batch = entries.filter { !$0.counter }
        if !notes.isEmpty { serviceAccessCounters(notes) }
        guard !batch.isEmpty else { return }
        stats.count(.batches)
        stats.count(.faults, batch.count)
        struct Key: Hashable { let space: ObjectIdentifier; let page: UInt64 }
        var strongest: [Key: SVMFault] = [:]
        for f in batch {
            let k = Key(space: ObjectIdentifier(f.space), page: f.address)
            if let seen = strongest[k], seen.access >= f.access { continue }
            strongest[k] = f
        }
        // A fault whose page an earlier batch has mapped since, with the access it needs, is
        // already serviced (UVM drops these too): a duplicate across batches.
        let pending = strongest.values.filter { f in
            f.space.lock.withLock { f.space.table[f.address >> pageShift].map { !SVMEngine.permits($0, f.access) } ?? true }
        }
        stats.count(.duplicates, batch.count - pending.count)
        let latest = batch.map(\.time).max() ?? 0
        faultClock.advance(to: latest)
        faultClock.advance(by: costs.faultBatchNs + UInt64(pending.count) * costs.perFaultNs)
        let unique = pending.sorted { a, b in a.space.id != b.space.id ? a.space.id < b.space.id : a.address < b.address }
        var i = 0
        while i < unique.count {
            var j = i + 1
            while j < unique.count, unique[j].space === unique[i].space, unique[j].access == unique[i].access,
                  unique[j].address == unique[j - 1].address + pageSize,
                  unique[j].address & pmdMask == unique[i].address & pmdMask { j += 1 }
            let failed = serviceGroup(unique[i].space, unique[i].address, unique[j - 1].address + pageSize, unique[i].access)
            // A denied access cancels the faults that asked as much; a weaker one at the same
            // page (a read where a write was denied) is replayed and serviced on its own.
            for (addr, err) in failed {
                for f in batch where f.space === unique[i].space && f.address == addr && (err != .EPERM || f.access >= .write) {
                    f.engine.launch.cancel(SVMFatalFault(address: addr, access: f.access, errno: err))
                }
            }
            i = j
        }
        faultClock.advance(by: costs.replayNs)
        let resume = faultClock.now
        var replayed = Set<ObjectIdentifier>()
        for f in batch {
            f.engine.replay(through: f.ticket, at: resume)
            replayed.insert(ObjectIdentifier(f.engine))
        }
        stats.count(.replays, replayed.count)
        trace?.record(.batch(faults: batch.count, serviced: pending.count, wallNs: monotonicNanoseconds() &- wall0), virtual: resume,
                      wall: wall0)
        replayQueue.wakeAll()
    }

    /// Access-counter notifications (UVM's access counter service): each distinct region asks
    /// the policy what to migrate; what moved is mapped on the device (read-only; a write
    /// faults for more). Locking: none held.
    func serviceAccessCounters(_ notes: [SVMFault]) {
        lock.assertNotHeld()
        stats.count(.accessCounters, notes.count)
        let regionSize: UInt64 = 1 << SVMSpace.counterRegionShift
        var seen = Set<String>()
        for n in notes where !n.space.isCutOff && seen.insert("\(n.space.id):\(n.address / regionSize)").inserted {
            let mm = n.space.mm
            // The region of the page that fired, within that page's VMA.
            let span: (UInt64, UInt64)? = {
                mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
                guard let vma = mm.vmaLookup(n.address), vma.flags.contains(.read) else { return nil }
                return (vma.start, vma.end)
            }()
            guard let (vs, ve) = span else { continue }
            let base = n.address & ~(regionSize - 1)
            let s = max(base, vs), e = min(base + regionSize, ve)
            guard s < e else { continue }
            let region = SVMFaultGroup(space: n.space, start: s, end: e, access: .read, vmaStart: vs, vmaEnd: ve)
            guard let r = policy.accessCounterFired(region: region, device: self) else { continue }
            let (ms, me) = SVMDevice.clip(r, to: vs, ve)
            if ms < me, migrateToDevice(n.space, ms, me) > 0 { _ = map(n.space, ms, me, write: false, localOnly: true) }
        }
    }

    /// A policy's range widened to whole pages and clipped to the VMA [vs, ve) (empty if it
    /// misses it: start ≥ end).
    static func clip(_ r: Range<UInt64>, to vs: UInt64, _ ve: UInt64) -> (UInt64, UInt64) {
        (max(r.lowerBound & ~(pageSize - 1), vs), min((r.upperBound &+ pageSize - 1) & ~(pageSize - 1), ve))
    }

    /// Services one group: the policy chooses whether (and how much) to migrate into device
    /// memory; the group is then mapped where its pages are (`hmmRangeFault` under the
    /// notifier protocol, this device's pages reported as they are); an atomic fault on a page
    /// left in system memory takes it device-exclusive. Return: pages that cannot be serviced,
    /// with the error (EFAULT: no VMA or no read permission; EPERM: a write the VMA forbids).
    func serviceGroup(_ space: SVMSpace, _ start: UInt64, _ end: UInt64, _ access: SVMAccess) -> [(UInt64, Errno)] {
        // A space cut off after a failed shootdown is never mapped again: its faults are fatal.
        if space.isCutOff { return stride(from: start, to: end, by: Int(pageSize)).map { ($0, .EIO) } }
        let mm = space.mm
        let vmaRange: (UInt64, UInt64, VMFlags)? = {
            mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
            guard let vma = mm.vmaLookup(start), vma.start <= start, end <= vma.end else { return nil }
            return (vma.start, vma.end, vma.flags)
        }()
        guard let (vs, ve, flags) = vmaRange else {
            // No VMA holds the whole group: page by page, to find the pages outside any VMA.
            return end - start == pageSize ? [(start, .EFAULT)] : servicePageByPage(space, start, end, access)
        }
        // The access against the VMA's protection first, as UVM checks it before any
        // migration: a device write to read-only memory is fatal, wherever the page is.
        let denied: Errno? = !flags.contains(.read) ? .EFAULT : access >= .write && !flags.contains(.write) ? .EPERM : nil
        if let denied { return stride(from: start, to: end, by: Int(pageSize)).map { ($0, denied) } }
        let group = SVMFaultGroup(space: space, start: start, end: end, access: access, vmaStart: vs, vmaEnd: ve)
        // Pages a policy prefetches with the group are mapped with it once in device memory, as
        // UVM maps the pages it prefetched: the engines would otherwise fault on each. The group's
        // own pages may evict to make room; the pages around it take only free device memory
        // (a prefetch never evicts: it would push out pages the engines are using to bring in
        // pages they may never touch).
        var mapStart = start, mapEnd = end
        var tails: [(UInt64, UInt64)] = []
        for r in policy.placements(for: group, device: self) {
            let (s, e) = SVMDevice.clip(r, to: vs, ve)
            guard s < e else { continue }
            let gs = max(start, s), ge = min(end, e)
            var moved = gs < ge ? migrateToDevice(space, gs, ge) : 0
            // The pages of the range around the group (all of it if it misses the group).
            let around = gs < ge ? [(s, gs), (ge, e)].filter { $0.0 < $0.1 } : [(s, e)]
            for (a, b) in around { moved += migrateToDevice(space, a, b, evict: false) }
            tails += around
            if moved > 0 { mapStart = min(mapStart, s); mapEnd = max(mapEnd, e) }
        }
        if access == .atomic { return serviceAtomic(space, start, end, mapStart: mapStart, mapEnd: mapEnd) }
        if let err = map(space, start, end, write: access >= .write) {
            // EBUSY: the notifier kept moving for the loop's whole timeout (CPU changes
            // elsewhere in the space); the engine faults again instead of failing.
            if err == .EBUSY { return [] }
            return end - start == pageSize ? [(start, err)] : servicePageByPage(space, start, end, access)
        }
        // The prefetched pages that did move (a snapshot: nothing is faulted in).
        for (a, b) in tails { _ = map(space, a, b, write: access >= .write, localOnly: true) }
        if access == .write, let failed = breakReadOnlyLocal(space, start, end) { return [failed] }
        return []
    }

    /// An atomic group (`nouveau_atomic_range_fault`): pages in this device's memory are
    /// mapped from a snapshot (a faulting walk would restore a device-exclusive entry the
    /// device holds); a local page held read-only (after a fork) goes back to system memory
    /// first; every page not local is taken device-exclusive.
    private func serviceAtomic(_ space: SVMSpace, _ start: UInt64, _ end: UInt64, mapStart: UInt64, mapEnd: UInt64) -> [(UInt64, Errno)] {
        _ = map(space, mapStart, mapEnd, write: true, localOnly: true)
        for a in stride(from: start, to: end, by: Int(pageSize)) {
            let e = space.lock.withLock { space.table[a >> pageShift] }
            if let e, e.local && e.write { continue }
            if let e, e.local, migrateToSystem(space, a, a + pageSize) == 0 {
                if memory.freeFrames == 0 { return [(a, .ENOMEM)] }
                continue // busy: the engine faults again
            }
            if let err = grabExclusive(space, a) { return [(a, err)] }
        }
        return []
    }

    /// A group that failed as a whole, one page at a time, to name the pages at fault.
    private func servicePageByPage(_ space: SVMSpace, _ start: UInt64, _ end: UInt64, _ access: SVMAccess) -> [(UInt64, Errno)] {
        var failed: [(UInt64, Errno)] = []
        var a = start
        while a < end {
            failed += serviceGroup(space, a, a + pageSize, access)
            a += pageSize
        }
        return failed
    }

    /// Maps [start, end) on the device where the pages are (`nouveau_range_fault`): the
    /// driver loop of the notifier protocol, faulting pages in (writable if `write`), and
    /// programming the device table under its lock only if no invalidation overtook the walk.
    /// Return: nil, or the error of the range fault.
    /// With `localOnly`, a snapshot (nothing faulted in) that maps only this device's pages.
    func map(_ space: SVMSpace, _ start: UInt64, _ end: UInt64, write: Bool, localOnly: Bool = false) -> Errno? {
        var range = HMMRange(notifier: space.notifier, notifierSeq: 0, start: start, end: end,
                             defaultFlags: localOnly ? 0 : HMMPfn.valid | (write ? HMMPfn.write : 0), devPrivateOwner: self)
        var local: [UInt64] = []
        var remote = 0
        do {
            try HMMMirror.faultAndProgram(&range, driverLock: space.lock) { (r: HMMRange) throws(Errno) in
                guard !space.isCutOff else { throw .EIO }
                local.removeAll(); remote = 0
                for (k, e) in r.hmmPfns.enumerated() where HMMPfn.isValid(e) {
                    let pfn = HMMPfn.pfn(e)
                    let isLocal = isLocal(pfn)
                    if localOnly && !isLocal { continue }
                    space.setEntry((r.start >> pageShift) + UInt64(k), SVMEntry(pfn: pfn, write: HMMPfn.isWrite(e), atomic: false, local: isLocal))
                    if isLocal { local.append(pfn) } else { remote += 1 }
                }
            }
        } catch {
            return error
        }
        touchChunks(local)
        stats.count(.remoteMaps, remote)
        return nil
    }

    /// A write fault on pages this device holds read-only (a fork made them copy-on-write):
    /// they go back to system memory, where the CPU's fault breaks the sharing, and are mapped
    /// again writable (remotely; the policy may bring them back on a later fault).
    /// Return: nil, or the page that failed with its error (of mapping them again, or ENOMEM
    /// for a page that could not move for want of system memory).
    private func breakReadOnlyLocal(_ space: SVMSpace, _ start: UInt64, _ end: UInt64) -> (UInt64, Errno)? {
        let readOnly = space.lock.withLock {
            stride(from: start, to: end, by: Int(pageSize)).filter { a in
                guard let e = space.table[a >> pageShift] else { return false }
                return e.local && !e.write
            }
        }
        guard !readOnly.isEmpty else { return nil }
        for a in readOnly { migrateToSystem(space, a, a + pageSize) }
        if let err = map(space, start, end, write: true) { return err == .EBUSY ? nil : (readOnly[0], err) }
        // A page that could not move (busy, or no system page for it) is still local and
        // read-only: out of memory is fatal; a busy page faults again.
        let stuck = space.lock.withLock { readOnly.first { a in space.table[a >> pageShift].map { $0.local && !$0.write } ?? false } }
        guard let stuck, memory.freeFrames == 0 else { return nil }
        return (stuck, .ENOMEM)
    }

    /// Exclusive access for an atomic on a system page (`nouveau_atomic_range_fault`): the
    /// page is made device-exclusive, then mapped atomic under the table lock if no
    /// invalidation came in between (else the engine faults again).
    /// Return: nil, or the error of `makeDeviceExclusive`.
    func grabExclusive(_ space: SVMSpace, _ address: UInt64) -> Errno? {
        let mm = space.mm
        // A page still device-exclusive whose atomic entry went (an invalidation that did not
        // restore it) is restored first, before the sequence is read: a restore inside the
        // window (make_device_exclusive faults such an entry back) would fail the check every
        // time, and the engine would fault for ever.
        mm.mmapLock.lockRead()
        if let v = mm.pageTable.lookup(address, level: .pte)?.entry.load(), v.isSwap, v.swapEntry.isDeviceExclusive,
           let pages = try? mm.getUserPagesRemote(address, count: 1, flags: [.write]) {
            mm.putUserPages(pages)
        }
        mm.mmapLock.unlockRead()
        let seq = space.notifier.readBegin()
        mm.mmapLock.lockRead()
        let page: Page
        do { page = try mm.makeDeviceExclusive(address, owner: self) } catch {
            mm.mmapLock.unlockRead()
            return error == .EBUSY ? nil : error
        }
        let installed: Bool = space.lock.withLock {
            guard !space.notifier.readRetry(seq), !space.isCutOff else { return false }
            space.setEntry(address >> pageShift, SVMEntry(pfn: page.pfn, write: true, atomic: true, local: false))
            return true
        }
        mm.mmapLock.unlockRead()
        page.unlock()
        memory.put(page)
        if installed { stats.count(.exclusiveGrabs) }
        return nil
    }
}
