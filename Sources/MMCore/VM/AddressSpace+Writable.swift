import MMSync

extension VMA {
    /// Whether the VMA's `vm_page_prot` lets the user read (x86 has no write-only or exec-only
    /// PTE: any access bit makes the page readable).
    var pageProtReadable: Bool { !flags.intersection(.accessMask).isEmpty }

    /// `vma_wants_manual_pte_write_upgrade`: private writable mappings (COW must be checked page
    /// by page). Shared mappings are tmpfs here, which wants no write notification, so their
    /// `vm_page_prot` is writable already and needs no manual upgrade.
    var wantsManualPTEWriteUpgrade: Bool { !isShared && flags.contains(.write) }

    /// A present PTE for `pfn` as `mk_pte(page, vma->vm_page_prot)` gives it: readable as the
    /// VMA allows, writable only for shared writable mappings (private ones are COW), old and
    /// clean.
    func pageProtPTE(_ pfn: UInt64) -> PTE {
        PTE.page(pfn, write: isShared && flags.contains(.write), user: pageProtReadable).mkold()
    }
}

extension AddressSpace {
    /// `can_change_pte_writable` (Linux 7.2, mm/mprotect.c): may this present PTE of a writable
    /// VMA become writable without a write fault? Private mappings: only for an exclusive
    /// anonymous page (the write fault would reuse it without copying). Shared mappings: only
    /// if the PTE is dirty. No PROT_NONE entry is upgraded. Soft-dirty and uffd-wp tracking,
    /// which would forbid it, are never armed here (every VMA keeps VM_SOFTDIRTY).
    /// Locking: caller holds the lock of the PTE table holding `ptep`, whose value is `pte`.
    func canChangePTEWritable(_ vma: VMA, _ ptep: EntryPointer, _ pte: PTE) -> Bool {
        memory.tablePage(of: ptep).ptl.assertHeld()
        guard vma.flags.contains(.write), pte.isPresent, pte.isUser else { return false }
        if vma.isShared { return pte.isDirty }
        guard !pte.isSpecial, pte.pfn != 0 else { return false } // vm_normal_page: none for the zero page
        let page = memory.page(pte.pfn)
        return page.isAnon && page.test(.anonExclusive)
    }

    /// `restore_exclusive_pte`: replaces a device-exclusive entry with the present PTE the VMA
    /// gives (old; soft-dirty carried over), writable and — if the folio is dirty — dirty when
    /// `canChangePTEWritable` allows it. No invalidation: the entry was not present.
    /// Locking: caller holds the page lock and the PTE lock; `ptep` still holds `orig`.
    func restoreExclusivePTE(_ vma: VMA, _ page: Page, _ ptep: EntryPointer, _ orig: PTE) {
        precondition(page.isLocked, "restore_exclusive_pte without the page lock")
        memory.tablePage(of: ptep).ptl.assertHeld()
        var pte = vma.pageProtPTE(page.pfn)
        if orig.isSoftDirty { pte = PTE(raw: pte.raw | PTE.softDirty) }
        if canChangePTEWritable(vma, ptep, pte) {
            if page.test(.dirty) { pte = pte.mkdirty() }
            pte = pte.mkwrite()
        }
        ptep.store(pte)
    }
}
