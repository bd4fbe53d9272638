import MMSync

extension AddressSpace {
    /// `do_swap_page`: a non-present, non-empty entry. Swap slots are read in (`doSwapPage`);
    /// migration entries are waited out;
    /// device-private entries go to the owner's `migrateToRAM`; device-exclusive entries are
    /// restored to ordinary PTEs after a CLEAR invalidation.
    /// Locking: mmap lock held for read, or the VMA's lock (`.vmaLock`: not for device-private
    /// entries); no PTE lock held on entry or return.
    func doSwapEntry(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef, _ entry: PTE,
                     flags: FaultFlags) -> FaultResult {
        assertFaultLocked(vma, flags); Lockdep.assertNoSpinLockHeld()
        let swp = entry.swapEntry
        if swp.isMigration {
            // migration_entry_wait: the migrating thread holds the page lock until the entry is
            // replaced, so waiting for the unlock and retrying is enough. As the kernel's
            // softleaf_entry_wait_on_locked, the waiter holds no page reference: a reference held
            // while waiting would make the migration's reference count check fail.
            ptl.lock()
            guard ptep.load() == entry else { ptl.unlock(); return .retry }
            let page = memory.page(swp.pfn)
            ptl.unlock()
            page.waitUnlocked()
            stats.count(.faultMigrationWait)
            return .retry
        }
        if swp.isDevicePrivate { return doDevicePrivateFault(vma, address, ptep, ptl, entry, flags: flags) }
        if swp.isDeviceExclusive { return removeDeviceExclusiveEntry(vma, address, ptep, ptl, entry) }
        if swp.isSwapSlot { return doSwapPage(vma, address, ptep, ptl, entry, flags: flags, realAddress: address) }
        // Hwpoison and markers are SIGBUS.
        return .sigbus
    }

    /// The device-private branch of `do_swap_page` (Linux 7.2): under the PTE lock, trylock the
    /// page and only then take a reference; a thread that loses the trylock drops the PTE lock,
    /// waits for the page to be unlocked holding nothing, and retries. So the winner's
    /// `migrateToRAM` sees only its own reference and cannot be made to fail by the waiters
    /// (taking the reference first livelocked several threads faulting on the same page).
    /// The page's metadata outlives any page, so waiting on a page that was freed meanwhile only
    /// wakes up early.
    private func doDevicePrivateFault(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                                      _ entry: PTE, flags: FaultFlags) -> FaultResult {
        let page = memory.page(entry.swapEntry.pfn)
        ptl.lock()
        guard ptep.load() == entry else { ptl.unlock(); return .retry }
        if Mutation.on(.devicePrivateFaultReferenceFirst) {
            // The bug: a reference first, then the page lock, waited for holding it.
            memory.get(page)
            ptl.unlock()
            page.lock()
        } else {
            guard page.tryLock() else {
                ptl.unlock()
                page.waitUnlocked()
                return .retry
            }
            // The entry maps the page and the PTE lock is held: it cannot be freed, get is safe.
            memory.get(page)
            ptl.unlock()
        }
        defer { page.unlock(); memory.put(page) }
        guard let pgmap = memory.pagemap(of: page), let ops = pgmap.ops else { return .sigbus }
        stats.count(.faultDevicePrivate)
        let r = ops.migrateToRAM(DevicePrivateFault(mm: self, vma: vma, address: address, page: page,
                                                    isWrite: flags.contains(.write)))
        return r == .ok ? .retry : r
    }

    /// `remove_device_exclusive_entry` (Linux 7.2): lock the page, tell every device with a
    /// CLEAR invalidation that has no owner (so the device holding the atomic mapping drops it
    /// too), then put back the ordinary PTE (`restore_exclusive_pte`).
    private func removeDeviceExclusiveEntry(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                                            _ entry: PTE) -> FaultResult {
        let page = memory.page(entry.swapEntry.pfn)
        // A reference to lock the page: without the PTE lock a racing thread may remove the
        // entry and free the page (then there is nothing left to do).
        guard memory.tryGet(page) else { return .retry }
        defer { memory.put(page) }
        page.lock()
        defer { page.unlock() }
        let range = MMUNotifierRange(start: address, end: address + pageSize, event: .clear)
        if Mutation.on(.notifierUnderPTL) {
            ptl.lock()
            notifiers.invalidateRangeStart(range)
        } else {
            notifiers.invalidateRangeStart(range)
            ptl.lock()
        }
        if ptep.load() == entry || Mutation.on(.exclusiveRestoreWithoutRecheck) {
            restoreExclusivePTE(vma, page, ptep, entry)
            stats.count(.faultDeviceExclusive)
        }
        ptl.unlock()
        notifiers.invalidateRangeEnd(range)
        return .retry
    }
}
