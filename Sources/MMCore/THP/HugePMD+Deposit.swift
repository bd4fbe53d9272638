import MMSync

/// `pgtable_trans_huge_deposit` / `_withdraw`: every PMD leaf of a THP (or of the huge zero
/// folio) comes with a PTE table set aside when it was mapped, so that splitting the PMD
/// never needs an allocation (a partial munmap cannot fail for lack of memory). The tables
/// of one PMD table form a stack: the PMD table's private word names the top one, each
/// deposited table's private word the next (0 ends it).
extension PageTable {
    /// Sets `pgtable` (a zeroed, unused PTE table) aside for the leaf in `pmdTable`.
    /// Locking: `pmdTable`'s lock held.
    func deposit(_ pgtable: Page, in pmdTable: Page) {
        pmdTable.ptl.assertHeld()
        pgtable.privateWord = pmdTable.privateWord
        pmdTable.privateWord = pgtable.pfn
    }

    /// Takes back a table deposited in `pmdTable` (for a split, or to free it with the leaf).
    /// Locking: `pmdTable`'s lock held. Precondition: one was deposited.
    func withdraw(from pmdTable: Page) -> Page {
        pmdTable.ptl.assertHeld()
        let top = pmdTable.privateWord
        precondition(top != 0, "no PTE table deposited in \(pmdTable)")
        let t = memory.page(top)
        pmdTable.privateWord = t.privateWord
        t.privateWord = 0
        return t
    }

    /// Number of tables deposited in `pmdTable` (for the invariant checkers).
    func depositedTables(in pmdTable: Page) -> Int {
        var n = 0
        var pfn = pmdTable.privateWord
        while pfn != 0 && n <= ptrsPerTable { n += 1; pfn = memory.page(pfn).privateWord }
        return n
    }

    /// A fresh table to deposit, counted as the mm's (`pte_alloc_one`). Nil when no frame is
    /// free (after reclaim, with `mayReclaim`: the caller then holds no spin lock).
    func allocateDepositTable(mayReclaim: Bool = false) -> Page? {
        guard let t = PageTable.allocateTable(memory, mayReclaim: mayReclaim) else { return nil }
        tablePages.add(1)
        return t
    }
}
