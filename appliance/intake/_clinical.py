"""Clinical allow-list: eponyms, drug names (generic and brand) and units that must never be taken for a person's
name or a place, even where a name lexicon lists the word (Foley, Wilson, Bell, Allen, Barrett, Graves...)."""

from __future__ import annotations

__all__ = ["CLINICAL_WORDS", "DRUGS", "EPONYMS", "HEAD_NOUNS", "UNITS", "is_protected"]


def _words(text: str) -> frozenset[str]:
    return frozenset(w.lower() for w in text.split())


# eponym words: protected when a possessive or a clinical head noun follows ("Bell's palsy", "Allen test")
EPONYMS = _words(
    """
Addison Alzheimer Apgar Argyll Arnold Asperger Babinski Baker Barrett Bartter Battle Beck Behcet Bell Bence Berger
Bishop Blalock Boerhaave Bouchard Bowen Braxton Broca Brown Brudzinski Brugada Budd Buerger Burkitt Caplan Charcot
Chagas Cheyne Chiari Conn Colles Cooley Coombs Crigler Crohn Cullen Curling Cushing Dandy DeQuervain Dressler
Dubin Duchenne Dupuytren Ehlers Epley Erb Ewing Fallot Fanconi Felty Foley Frey Friedreich Gardner Gaucher Gehrig
Gilbert Glasgow Goodpasture Gram Graves Grey Guillain Barre Hashimoto Heberden Henoch Hirschsprung Hodgkin Holter
Homans Horner Huntington Hunter Hurler Jacksonian Jones Kaposi Kawasaki Kernig Klinefelter Korsakoff Krukenberg
Kussmaul Lambert Levine Lou Ludwig Lyme Mallory Marfan McBurney Meckel Meniere Minnesota Monteggia Murphy Nissen
Osler Paget Pancoast Parkinson Peyronie Pott Prinzmetal Purkinje Raynaud Reiter Reye Rinne Romberg Rovsing Schilling
Sjogren Smith Stevens Stokes Sturge Swan Ganz Takayasu Tay Sachs Tinel Phalen Tourette Trendelenburg Trousseau
Turner Valsalva Virchow Von Willebrand Waldenstrom Weber Wegener Wenckebach Wernicke Whipple Wilms Wilson Wolff
Parkinson White Zenker Zollinger Ellison Allen Down Hartmann Seldinger Hickman Groshong Ranson Wells Child Pugh
Killip Mallampati Rockall Blatchford Denver Edinger Westphal Moro Weil Felix Dix Hallpike Lachman McMurray Finkelstein
Durkan Spurling Patrick Thomas Ortolani Barlow Galeazzi Trendelenburg Snellen Ishihara Weber Schirmer Tzanck Wood
Braden Morse Norton Waterlow Richmond Ramsay Bristol Berg Tinetti Barthel Karnofsky Lansky Gleason Breslow Spetzler
Gustilo Salter Bosniak Jackson Pratt Penrose Hemovac Pleurevac Sengstaken Blakemore Minerva Hoffmann Chvostek Kehr
Lhermitte Froment Jobe Yergason Apley Thessaly Ottawa Centor Caprini Padua Geneva Nexus Framingham Mentzer Nikolsky
Auspitz Koebner Darier Leser Trelat Hutchinson Gunn Adie Adson Roos Yankauer Ambu Bair Doppler Broviac Quinton
Tenckhoff Mahurkar Frazier Macintosh Luer Hoyer Sengstaken Minnesota Salem Dobhoff Coude Tegaderm Steri Kerlix
"""
)
HEAD_NOUNS = _words(
    """
disease syndrome sign signs test tests catheter score scale palsy lymphoma sarcoma tumor tumour esophagus oesophagus
dementia thyroiditis phenomenon procedure fundoplication respirations respiration breathing maneuver manoeuvre
position pattern encephalopathy triad reflex node nodes fracture ulcer classification criteria stain staining
disorder contracture diverticulum hernia aneurysm block tube line drain lamp cell cells body bodies law operation
repair anastomosis approach incision retractor forceps sheath chart formula equation monitor monitoring loop
coma
drains device collar brace splint frame valve shunt bag stockings boot boots mask questionnaire inventory index
grade grading stage staging tool rule rules assessment risk suction lift blade hugger sump strips
anaemia anemia pneumonia cellulitis sepsis asthma bronchitis bronchiolitis gastroenteritis pyelonephritis appendicitis
cholecystitis pancreatitis diverticulitis colitis hepatitis meningitis migraine infection failure deficiency
agonist agonists antagonist antagonists blocker blockers inhibitor inhibitors statin statins diuretic diuretics
anticoagulant anticoagulants antibiotic antibiotics antiplatelet analgesic analgesics opioid opioids steroid steroids
colonoscopy endoscopy bronchoscopy gastroscopy sigmoidoscopy cystoscopy laparoscopy arthroscopy thoracoscopy biopsy
mammogram mammography echocardiogram echocardiography electrocardiogram angiogram angiography angioplasty ultrasound
sonogram radiograph radiography tomography arthroplasty appendectomy cholecystectomy hysterectomy mastectomy colectomy
tonsillectomy dialysis transfusion intubation extubation catheterization catheterisation spirometry
"""
)
DRUGS = _words(
    """
metformin lisinopril atorvastatin amlodipine metoprolol omeprazole losartan gabapentin sertraline furosemide apixaban
warfarin levothyroxine insulin glargine lispro aspart prednisone prednisolone amoxicillin ceftriaxone vancomycin
heparin enoxaparin rivaroxaban dabigatran clopidogrel aspirin ibuprofen acetaminophen paracetamol naproxen morphine
hydromorphone oxycodone hydrocodone tramadol fentanyl lorazepam diazepam haloperidol quetiapine olanzapine
risperidone levetiracetam phenytoin valproate lamotrigine ondansetron pantoprazole esomeprazole famotidine
simvastatin rosuvastatin pravastatin carvedilol bisoprolol atenolol propranolol diltiazem verapamil digoxin
amiodarone hydrochlorothiazide spironolactone torsemide bumetanide tamsulosin finasteride sitagliptin empagliflozin
dapagliflozin semaglutide liraglutide dulaglutide sacubitril valsartan candesartan ramipril enalapril
azithromycin doxycycline ciprofloxacin levofloxacin nitrofurantoin cephalexin piperacillin tazobactam meropenem
clindamycin metronidazole fluconazole acyclovir oseltamivir albuterol salbutamol ipratropium tiotropium budesonide
fluticasone montelukast methotrexate hydroxychloroquine allopurinol colchicine citalopram escitalopram fluoxetine
paroxetine venlafaxine duloxetine bupropion mirtazapine trazodone zolpidem melatonin donepezil memantine
Eliquis Xarelto Pradaxa Lasix Lipitor Crestor Zocor Zoloft Lexapro Prozac Keppra Dilantin Coumadin Augmentin Tylenol
Advil Motrin Aleve Norco Percocet Vicodin Dilaudid Ativan Valium Xanax Haldol Seroquel Zyprexa Risperdal Protonix
Nexium Prilosec Pepcid Zofran Lantus Levemir Humalog Novolog Tresiba Januvia Jardiance Farxiga Ozempic Victoza
Trulicity Mounjaro Wegovy Entresto Plavix Brilinta Synthroid Levoxyl Flomax Proscar Norvasc Toprol Lopressor Coreg
Zestril Prinivil Cozaar Diovan Aldactone Lanoxin Cordarone Ventolin ProAir Spiriva Symbicort Advair Singulair
beta alpha ace arb ssri snri nsaid nsaids ppi
Sinemet Zosyn Unasyn Rocephin Vancocin Lovenox Fragmin Arixtra Toradol Xeljanz Solu-Medrol Tegretol Depakote
Lamictal Topamax Trileptal Vimpat Klonopin Restoril Dexilant Reglan Imitrex Lopid Tricor Zetia Vytorin Levaquin
Biaxin Zithromax Cleocin Macrobid Bactroban Diflucan Sporanox Valcyte Epogen Procrit Neupogen Neulasta Xolair
Prolia Forteo Boniva Fosamax Evista Premarin Provera Yaz Flexeril Robaxin Skelaxin Zanaflex Mobic Celebrex Voltaren
Neurontin Lyrica Ultram Narcan Suboxone Cymbalta Effexor Wellbutrin Remeron Desyrel Ambien Aricept Namenda Humira
Enbrel Remicade Keytruda Opdivo Herceptin Avastin Rituxan Bactrim Cipro Levaquin Keflex Flagyl Diflucan Valtrex
Tamiflu Medrol Decadron Solumedrol Benadryl Claritin Zyrtec Allegra Flonase Miralax Colace Senna Dulcolax Imodium
penicillin cephalosporin carbapenem fluoroquinolone macrolide aminoglycoside tetracycline sulfonamide glycopeptide
antibiotic antibiotics antiviral antifungal anticoagulant antiplatelet antihypertensive antiarrhythmic diuretic
statin statins benzodiazepine opioid opiate corticosteroid steroid antihistamine antidepressant antipsychotic
anticonvulsant antiepileptic bronchodilator anticholinergic antiemetic laxative vasopressor inotrope immunosuppressant
biologic chemotherapy gentamicin tobramycin amikacin cefazolin cefepime ceftazidime linezolid daptomycin ampicillin
nafcillin oxacillin ertapenem imipenem trimethoprim sulfamethoxazole rifampin isoniazid ivermectin norepinephrine
epinephrine vasopressin dobutamine dopamine phenylephrine milrinone propofol midazolam ketamine dexmedetomidine
methylprednisolone hydrocortisone dexamethasone labetalol hydralazine nitroglycerin nicardipine clonidine
potassium magnesium sodium bicarbonate calcium phosphate glucose dextrose
"""
)
UNITS = _words(  # units and dosing words ("four times daily", "two tabs nightly")
    """
times daily twice once nightly weekly hourly tab tabs tablet tablets cap caps capsule capsules dose doses puff puffs
drop drops patch patches spray sprays vial vials ampule syringe sachet suppository
bid tid qid qd qhs qam qpm prn stat po iv im sc sq sl pr
mg mcg ug g kg ml mL l L dl dL x10 mmol umol mol meq mEq iu IU units unit mm cm m hr hrs h min sec bpm mmHg kPa
"""
)


CLINICAL_WORDS = DRUGS | EPONYMS | HEAD_NOUNS | UNITS  # a word outside this set is never protected


def is_protected(word: str, following: str = "") -> bool:
    """Whether ``word`` is clinical vocabulary here: a drug or unit anywhere, an eponym before ``'s``/``'`` or a
    clinical head noun (``following`` is the text right after the word)."""
    low = word.lower()
    if low in HEAD_NOUNS:  # "esophagus" in "Barrett's esophagus" is never a name either
        return True
    if "-" in low:  # Cheyne-Stokes, Guillain-Barre, Swan-Ganz: the first part decides
        first, _, rest = low.partition("-")
        return is_protected(first, rest + following) if first in EPONYMS else low in DRUGS
    if low in DRUGS or (low in UNITS and len(low) > 1):
        return True
    if low not in EPONYMS:
        return False
    rest = following.lstrip()
    if rest[:1] in ("'", "’"):
        return True
    head = rest.split(maxsplit=2)
    words = [h.strip(".,;:()").lower() for h in head[:2]]
    return any(w in HEAD_NOUNS for w in words)
