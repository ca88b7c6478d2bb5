//! `pgtide bench cdc` (filled in below).

#[derive(Debug, clap::Args)]
pub struct CdcBenchArgs {}

pub async fn cdc(_args: CdcBenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
